import { test } from 'node:test';
import assert from 'node:assert/strict';

import type { CommandResult, CommandRunner, RunInput } from './command-runner';
import { NOVACRON_METADATA_NS } from './domain-xml';
import { destroyNovaCronGuests, listActiveNovaCronGuests } from './guest-fence';
import { LibvirtConnection } from './libvirt-connection';

const URI = 'qemu:///system?socket=/tmp/hv/host-1/sock/libvirt-sock';

const LISTING = [
  '11111111-1111-1111-1111-111111111111 vm-a',
  '22222222-2222-2222-2222-222222222222 vm-b',
  '33333333-3333-3333-3333-333333333333 other',
  '44444444-4444-4444-4444-444444444444 vm-off',
  '',
  "Domain: 'vm-a'",
  '  state.state=1',
  "Domain: 'vm-b'",
  '  state.state=3',
  "Domain: 'other'",
  '  state.state=1',
  "Domain: 'vm-off'",
  '  state.state=5',
].join('\n');

const novacronXml = (name: string, vmId: string) =>
  `<domain type="qemu"><name>${name}</name><metadata><novacron:instance xmlns:novacron="${NOVACRON_METADATA_NS}">` +
  `<novacron:vm-id>${vmId}</novacron:vm-id></novacron:instance></metadata></domain>`;

function fakeVirsh(destroy: (name: string) => Partial<CommandResult> = () => ({})) {
  const calls: string[][] = [];
  const runner: CommandRunner = {
    run: (input: RunInput) => {
      const args = input.args.slice(2);
      calls.push(args);
      const [command, , name = ''] = args;
      const reply = (partial: Partial<CommandResult>) =>
        Promise.resolve({ exitCode: 0, signal: null, stdout: '', stderr: '', timedOut: false, ...partial });
      if (command?.startsWith('list --all')) return reply({ stdout: LISTING });
      if (command === 'dumpxml') {
        const xml = name === 'other' ? `<domain><name>other</name></domain>` : novacronXml(name, `id-${name}`);
        return reply({ stdout: xml });
      }
      if (command === 'destroy') return reply(destroy(name));
      throw new Error(`unexpected virsh ${args.join(' ')}`);
    },
    spawn: () => {
      throw new Error('no event streams here');
    },
  };
  return { conn: new LibvirtConnection({ uri: URI, runner }), calls };
}

test('lists only active domains with NovaCron metadata', async () => {
  const { conn, calls } = fakeVirsh();
  const guests = await listActiveNovaCronGuests(conn);
  assert.deepEqual(
    guests.map((g) => [g.name, g.vmId, g.state]),
    [
      ['vm-a', 'id-vm-a', 'running'],
      ['vm-b', 'id-vm-b', 'paused'],
    ],
  );
  // A shut-off domain's XML is never read: it has nothing to stop.
  assert.ok(!calls.some((args) => args[0] === 'dumpxml' && args[2] === 'vm-off'));
});

test('destroys every active NovaCron guest and leaves other domains alone', async () => {
  const { conn, calls } = fakeVirsh();
  const result = await destroyNovaCronGuests(conn);
  assert.deepEqual(result.stopped.map((g) => g.name).sort(), ['vm-a', 'vm-b']);
  assert.deepEqual(result.failed, []);
  const destroyed = calls.filter((args) => args[0] === 'destroy').map((args) => args[2]);
  assert.deepEqual(destroyed.sort(), ['vm-a', 'vm-b']);
});

test('a guest already off counts as stopped; a failed destroy is reported', async () => {
  const { conn } = fakeVirsh((name) =>
    name === 'vm-a'
      ? {
          exitCode: 1,
          stderr:
            'error: Failed to destroy domain vm-a\nerror: Requested operation is not valid: domain is not running',
        }
      : { exitCode: 1, stderr: 'error: Failed to destroy domain vm-b\nerror: internal error: something broke' },
  );
  const result = await destroyNovaCronGuests(conn);
  assert.deepEqual(
    result.stopped.map((g) => g.name),
    ['vm-a'],
  );
  assert.equal(result.failed.length, 1);
  assert.equal(result.failed[0]?.guest.name, 'vm-b');
  assert.match(result.failed[0]?.error ?? '', /something broke/);
});
