/**
 * The host watchdog process against a real libvirtd (the harness) and two tiny diskless TCG guests, one NovaCron's
 * and one not: armed and orphaned (its agent died) it destroys the NovaCron guest after the deadline and not
 * before, then exits; disarmed it leaves the guest alone; the foreign domain survives both.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

import { buildDomainXml, detectDomainType } from '../native/libvirt/domain-xml';
import { assertHypervisorBinaries, startLocalHypervisors, type LocalHypervisors } from '../native/libvirt/harness';
import { LibvirtConnection } from '../native/libvirt/libvirt-connection';
import { DomainState } from '../native/libvirt/libvirt-types';
import { ROOT } from '../test/support/processes';
import { waitUntil } from '../test/support/wait';
import { WatchdogExit } from './host-watchdog';

const NOVACRON_GUEST = 'wd-novacron-1';
const FOREIGN_GUEST = 'wd-foreign-1';
const ARM_AHEAD_MS = 2000;

let scratch: string;
let hypervisors: LocalHypervisors | undefined;
let conn: LibvirtConnection;
const watchdogs: ChildProcess[] = [];

function domainXml(name: string, novacron: boolean): string {
  const xml = buildDomainXml({
    name,
    uuid: randomUUID(),
    vcpus: 1,
    // No disk and no network: SeaBIOS finds nothing to boot and idles, the cheapest running QEMU there is.
    memoryMiB: 32,
    disks: [],
    networks: [],
    metadata: { vmId: `vm-${name}`, owner: 'watchdog-test' },
    imageRoot: scratch,
    domainType: detectDomainType(),
  });
  return novacron ? xml : xml.replace(/<metadata>[\s\S]*<\/metadata>/, '');
}

before(async () => {
  assertHypervisorBinaries();
  scratch = await mkdtemp(path.join(tmpdir(), 'novacron-watchdog-'));
  hypervisors = await startLocalHypervisors({ count: 1, baseDir: path.join(scratch, 'hv'), network: false });
  conn = new LibvirtConnection({ uri: hypervisors.hosts[0]!.uri });
  for (const [name, novacron] of [
    [NOVACRON_GUEST, true],
    [FOREIGN_GUEST, false],
  ] as const) {
    await conn.domainDefineXML({ xml: domainXml(name, novacron) });
    await conn.domainCreate({ name });
  }
});

after(async () => {
  for (const child of watchdogs) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  for (const name of [NOVACRON_GUEST, FOREIGN_GUEST]) {
    await conn?.domainDestroy({ name }).catch(() => undefined);
    await conn?.domainUndefine({ name }).catch(() => undefined);
  }
  await hypervisors?.stop();
  if (scratch) await rm(scratch, { recursive: true, force: true });
});

/** Starts the watchdog as the agent does (its own process, stdin a pipe) and waits until it reads its input. */
async function startWatchdog() {
  const child = spawn(
    process.execPath,
    [
      '--import',
      'tsx',
      path.join(ROOT, 'workers/host-watchdog.ts'),
      '--host-id',
      'host-1',
      '--libvirt-uri',
      conn.uri,
      '--log-level',
      'info',
    ],
    { cwd: ROOT, detached: true, stdio: ['pipe', 'pipe', 'pipe'] },
  );
  watchdogs.push(child);
  let output = '';
  child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
  child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
  const exited = new Promise<{ code: number | null; at: bigint }>((resolve) =>
    child.once('exit', (code) => resolve({ code, at: process.hrtime.bigint() })),
  );
  await waitUntil('the watchdog to start', () => output.includes('host watchdog running') || child.exitCode !== null);
  assert.equal(child.exitCode, null, `the watchdog exited at start:\n${output}`);
  const send = (message: object) => child.stdin.write(`${JSON.stringify(message)}\n`);
  return { child, exited, output: () => output, send };
}

const state = (name: string) => conn.domainGetState({ name });
const msUntil = (deadline: bigint) => Number((deadline - process.hrtime.bigint()) / 1_000_000n);

test('orphaned by its agent, the watchdog destroys the NovaCron guest after the deadline, not before, and exits', async (t) => {
  const watchdog = await startWatchdog();
  const deadline = process.hrtime.bigint() + BigInt(ARM_AHEAD_MS) * 1_000_000n;
  watchdog.send({ arm: deadline.toString() });
  // The agent dies: its end of the pipe closes without a disarm.
  watchdog.child.stdin.end();

  await sleep(msUntil(deadline) - 500);
  assert.equal(await state(NOVACRON_GUEST), DomainState.running, 'the guest was stopped before the deadline');

  const timeout = sleep(msUntil(deadline) + 3000).then(() => undefined);
  const exit = await Promise.race([watchdog.exited, timeout]);
  assert.ok(exit, `the watchdog had not exited 3 s after the deadline:\n${watchdog.output()}`);
  assert.equal(exit.code, WatchdogExit.fenced, watchdog.output());
  assert.ok(exit.at >= deadline, 'the watchdog exited before its deadline');
  assert.equal(await state(NOVACRON_GUEST), DomainState.shutOff);
  assert.equal(await state(FOREIGN_GUEST), DomainState.running, 'a domain without NovaCron metadata was stopped');
  const fenced = watchdog
    .output()
    .split('\n')
    .find((line) => line.includes('"msg":"self-fenced"'));
  assert.ok(fenced, `no self-fenced line:\n${watchdog.output()}`);
  assert.match(fenced, new RegExp(`"name":"${NOVACRON_GUEST}"`));
  assert.doesNotMatch(fenced, new RegExp(FOREIGN_GUEST));
  const { lateMs } = JSON.parse(fenced) as { lateMs: number };
  t.diagnostic(
    `fired ${lateMs} ms after the deadline; exited ${Number((exit.at - deadline) / 1_000_000n)} ms after it`,
  );
});

test('disarmed, the watchdog exits and leaves the guest running past the deadline', async () => {
  await conn.domainCreate({ name: NOVACRON_GUEST });
  const watchdog = await startWatchdog();
  const deadline = process.hrtime.bigint() + BigInt(ARM_AHEAD_MS) * 1_000_000n;
  watchdog.send({ arm: deadline.toString() });
  watchdog.send({ disarm: true });
  watchdog.child.stdin.end();
  const exit = await watchdog.exited;
  assert.equal(exit.code, WatchdogExit.done, watchdog.output());
  assert.ok(exit.at < deadline, 'a disarmed watchdog waited for its deadline');
  await sleep(msUntil(deadline) + 2000);
  assert.equal(await state(NOVACRON_GUEST), DomainState.running);
  assert.equal(await state(FOREIGN_GUEST), DomainState.running);
  assert.doesNotMatch(watchdog.output(), /self-fenced/);
});
