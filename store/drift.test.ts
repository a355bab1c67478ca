import assert from 'node:assert/strict';
import { test } from 'node:test';
import { compareInventory, type VmView } from './drift';

const observedAt = new Date('2026-01-01T00:00:10Z');
const earlier = new Date('2026-01-01T00:00:05Z');
const ids = { web: '00000000-0000-4000-8000-000000000001', db: '00000000-0000-4000-8000-000000000002' };

function vm(over: Partial<VmView> & Pick<VmView, 'id' | 'name'>): VmView {
  return { hostId: 'h1', state: 'running', busy: false, updatedAt: earlier, ...over };
}

test('each kind of drift is found, and agreement is not drift', () => {
  const findings = compareInventory(
    {
      hostId: 'h1',
      observedAt,
      domains: [
        { name: 'web', uuid: ids.web, state: 'shutoff' },
        { name: 'rogue', uuid: 'ffffffff-0000-4000-8000-000000000000', state: 'running' },
      ],
    },
    [vm({ id: ids.web, name: 'web' }), vm({ id: ids.db, name: 'db', state: 'stopped' })],
  );
  assert.deepEqual(
    findings.map((f) => [f.kind, f.domainName, f.expected, f.actual]),
    [
      ['state-mismatch', 'web', 'running', 'shutoff'],
      ['missing-vm', 'db', 'stopped', 'absent'],
      ['unknown-vm', 'rogue', undefined, 'running'],
    ],
  );
  const agreeing = compareInventory(
    { hostId: 'h1', observedAt, domains: [{ name: 'web', uuid: ids.web, state: 'running' }] },
    [vm({ id: ids.web, name: 'web' })],
  );
  assert.deepEqual(agreeing, []);
});

test('VMs in flight, changed after the report, failed or on another host are not judged', () => {
  const empty = { hostId: 'h1', observedAt, domains: [] };
  for (const skipped of [
    vm({ id: ids.web, name: 'web', busy: true }),
    vm({ id: ids.web, name: 'web', state: 'creating' }),
    vm({ id: ids.web, name: 'web', state: 'deleting' }),
    vm({ id: ids.web, name: 'web', state: 'failed' }),
    vm({ id: ids.web, name: 'web', updatedAt: observedAt }),
    vm({ id: ids.web, name: 'web', hostId: 'h2' }),
  ]) {
    assert.deepEqual(compareInventory(empty, [skipped]), [], JSON.stringify(skipped));
  }
});

test('a second copy of a VM on a host that does not own it is drift, unless a workflow holds the VM', () => {
  const report = { hostId: 'h1', observedAt, domains: [{ name: 'web', uuid: ids.web, state: 'running' }] };
  const findings = compareInventory(report, [vm({ id: ids.web, name: 'web', hostId: 'h2' })]);
  assert.deepEqual(
    findings.map((f) => [f.kind, f.vmId, f.expected]),
    [['unknown-vm', ids.web, 'on h2']],
  );
  assert.deepEqual(compareInventory(report, [vm({ id: ids.web, name: 'web', hostId: 'h2', busy: true })]), []);
});

test('a migrating VM is judged on neither host: its domain on the target, nor its absence from the source', () => {
  const migrating = vm({ id: ids.web, name: 'web', hostId: 'h2', state: 'migrating', busy: true });
  const onTarget = { hostId: 'h1', observedAt, domains: [{ name: 'web', uuid: ids.web, state: 'running' }] };
  assert.deepEqual(compareInventory(onTarget, [migrating]), []);
  assert.deepEqual(compareInventory(onTarget, [{ ...migrating, busy: false }]), [], 'the state alone suffices');
  assert.deepEqual(compareInventory({ hostId: 'h2', observedAt, domains: [] }, [migrating]), []);
  // Once committed to h1, a copy left on the source is drift again.
  const committed = vm({ id: ids.web, name: 'web', hostId: 'h1' });
  const leftOnSource = { hostId: 'h2', observedAt, domains: [{ name: 'web', uuid: ids.web, state: 'paused' }] };
  assert.deepEqual(
    compareInventory(leftOnSource, [committed]).map((f) => [f.kind, f.expected]),
    [['unknown-vm', 'on h1']],
  );
});
