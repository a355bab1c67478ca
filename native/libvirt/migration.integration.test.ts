/**
 * Live migration through the driver alone, between two harness hypervisors (managed direct over loopback, each hop
 * on a port of its own), with the test guest under TCG: an idle guest there and back, a busy one with libvirt's
 * defaults, the same one under a bandwidth cap it cannot converge under (steered, then aborted) and in post-copy.
 * Each host keeps the guest's console in a log of its own, and the heartbeat counter read from those logs must
 * carry on across every move. Without libvirt, QEMU or the guest's build packages this fails; it does not skip.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { copyFile, mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { promisify } from 'node:util';

import { ensureTestGuestImage } from '../../guest/build';
import { parseConsoleLog, testGuestOemStrings } from '../../guest/workload';
import type { TestGuestWorkload } from '../../guest/workload';
import { freePort } from '../../test/support/ports';
import { waitUntil } from '../../test/support/wait';
import type { DomainMigrateInput } from './domain-migration';
import { DomainType, buildDomainXml } from './domain-xml';
import { LibvirtInvalidStateError, LibvirtMigrationAbortedError, LibvirtNotFoundError } from './errors';
import { startLocalHypervisors } from './harness';
import type { LocalHypervisors } from './harness';
import { LibvirtConnection } from './libvirt-connection';
import { DomainState, UNLIMITED_MIGRATION_BANDWIDTH_MIBPS } from './libvirt-types';
import { migrationJobSample } from './migration-job-sample';

const MiB = 1024 * 1024;
// Small, so that every pass is quick under TCG. 128 MiB leaves the guest room for a 32 MiB working set: at 64 MiB
// its kernel panics out of memory (seen here), the initramfs living in RAM too.
const MEMORY_MIB = 128;
const IDLE: TestGuestWorkload = { dirtyMiBps: 0 };
const BUSY: TestGuestWorkload = { dirtyMiBps: 200, workingSetMiB: 32 };
// Generous bounds for a loaded 2-core machine, not speed requirements.
const BOOT_TIMEOUT_MS = 90_000;
const MIGRATION_TIMEOUT_MS = 180_000;
const QEMU_DEFAULT_MAX_BANDWIDTH = 128 * MiB;

interface Host {
  hostId: string;
  uri: string;
  conn: LibvirtConnection;
}
interface Guest {
  name: string;
  /** The console log of the guest's current QEMU; every host, and every hop, writes its own. */
  consoleLog: string;
  hops: number;
}

let scratch: string;
let hypervisors: LocalHypervisors | undefined;
let h1: Host;
let h2: Host;
const idle: Guest = { name: 'mig-idle', consoleLog: '', hops: 0 };
const busy: Guest = { name: 'mig-busy', consoleLog: '', hops: 0 };

async function heartbeats(guest: Guest): Promise<number[]> {
  const report = parseConsoleLog(await readFile(guest.consoleLog, 'utf8').catch(() => ''));
  if (report.error !== undefined) assert.fail(`${guest.name}'s workload refused to start: ${report.error}`);
  return report.heartbeats;
}

/** Waits for `more` heartbeats past the current count and returns them all. */
async function moreHeartbeats(guest: Guest, more: number): Promise<number[]> {
  const count = (await heartbeats(guest)).length + more;
  return waitUntil(
    `${count} heartbeats in ${guest.consoleLog}`,
    async () => {
      const beats = await heartbeats(guest);
      return beats.length >= count ? beats : undefined;
    },
    { timeoutMs: BOOT_TIMEOUT_MS, intervalMs: 200 },
  );
}

/** What QEMU itself has for the migration parameters libvirt manages, and whether its migration is active. */
async function qemuMigration(
  host: Host,
  name: string,
): Promise<{ maxBandwidth: bigint; downtimeMs: number; active: boolean }> {
  // One virsh process, so that a poll is quick enough to catch a migration of a second or two. The parameters are
  // read between two looks at the job: libvirt applies them just before QEMU's migration starts, so a single look
  // after them can see a job that was not yet running when they were read (seen in CI: QEMU's 128 MiB/s default).
  const job = `qemu-monitor-command --domain ${name} --hmp 'info migrate'`;
  const { stdout } = await promisify(execFile)(
    'virsh',
    ['-c', host.uri, `${job} ; qemu-monitor-command --domain ${name} --hmp 'info migrate_parameters' ; ${job}`],
    { timeout: 30_000 },
  );
  const bandwidth = /^max-bandwidth: (\d+) bytes\/second/m.exec(stdout)?.[1];
  const downtime = /^downtime-limit: (\d+) ms/m.exec(stdout)?.[1];
  assert.ok(bandwidth && downtime, `no migration parameters in:\n${stdout}`);
  return {
    maxBandwidth: BigInt(bandwidth),
    downtimeMs: Number(downtime),
    active:
      (stdout.match(/^Migration status: active\b/gm)?.length ?? 0) === 2 &&
      (stdout.match(/^transferred ram: [1-9]/gm)?.length ?? 0) === 2,
  };
}

async function qemuMigrationParameters(
  host: Host,
  name: string,
): Promise<{ maxBandwidth: bigint; downtimeMs: number }> {
  const { maxBandwidth, downtimeMs } = await qemuMigration(host, name);
  return { maxBandwidth, downtimeMs };
}

async function boot(guest: Guest, workload: TestGuestWorkload, image: string): Promise<void> {
  const imageRoot = join(scratch, 'images');
  const disk = join(imageRoot, guest.name, 'disk.raw');
  await mkdir(join(imageRoot, guest.name), { recursive: true });
  await copyFile(image, disk);
  guest.consoleLog = join(scratch, `${guest.name}.0.${h1.hostId}.log`);
  const xml = buildDomainXml({
    name: guest.name,
    uuid: randomUUID(),
    vcpus: 1,
    memoryMiB: MEMORY_MIB,
    disks: [{ path: disk, format: 'raw', target: 'vda' }],
    networks: [],
    metadata: { vmId: `vm-${guest.name}`, owner: 'migration-test' },
    imageRoot,
    domainType: DomainType.qemu,
    consoleLogPath: guest.consoleLog,
    oemStrings: testGuestOemStrings(workload),
  });
  await h1.conn.domainDefineXML({ xml, validate: true });
  await h1.conn.domainCreate({ name: guest.name });
  await moreHeartbeats(guest, 1);
}

/**
 * The input for moving `guest` from one host to the other: its migratable XML with the target's own console log
 * (for the running domain and its definition there), and a loopback port of this hop's own.
 */
async function hop(guest: Guest, from: Host, to: Host): Promise<{ input: DomainMigrateInput; consoleLog: string }> {
  const xml = await from.conn.domainGetXMLDesc({ name: guest.name, migratable: true });
  assert.ok(xml.includes(guest.consoleLog), 'the console log path is in the domain XML');
  const consoleLog = join(scratch, `${guest.name}.${guest.hops + 1}.${to.hostId}.log`);
  const destXml = xml.split(guest.consoleLog).join(consoleLog);
  const input: DomainMigrateInput = {
    name: guest.name,
    destUri: to.uri,
    migrateUri: `tcp://127.0.0.1:${await freePort()}`,
    // The harness's disks sit on a local file system, which libvirt calls unsafe to migrate without copying.
    unsafe: true,
    destXml,
    persistentXml: destXml,
    timeoutMs: MIGRATION_TIMEOUT_MS,
  };
  return { input, consoleLog };
}

/** After a move: the guest runs on `to`, is gone from `from`, and its counter went on where it stopped. */
async function assertMoved(guest: Guest, from: Host, to: Host, consoleLog: string): Promise<void> {
  const before = await heartbeats(guest);
  guest.consoleLog = consoleLog;
  guest.hops += 1;
  assert.equal(await to.conn.domainGetState({ name: guest.name }), DomainState.running);
  assert.equal((await to.conn.domainLookupByName({ name: guest.name })).persistent, true);
  await assert.rejects(from.conn.domainLookupByName({ name: guest.name }), LibvirtNotFoundError);
  const after = await moreHeartbeats(guest, 2);
  const last = before.at(-1) ?? -1;
  assert.ok(after[0]! >= last, `${to.hostId} starts at heartbeat ${after[0]}, the source had reached ${last}`);
  assert.deepEqual(
    after,
    after.map((_, i) => after[0]! + i),
    'the counter rises by one each time, without a restart',
  );
}

async function measureDirtyRate(host: Host, name: string): Promise<number> {
  await host.conn.domainStartDirtyRateCalc({ name, seconds: 1 });
  const rate = await waitUntil(
    `dirty rate of ${name}`,
    async () => {
      const r = await host.conn.domainGetDirtyRate({ name });
      return r.status === 'measured' ? r : undefined;
    },
    { timeoutMs: 30_000, intervalMs: 200 },
  );
  assert.equal(rate.periodSeconds, 1);
  return rate.bytesPerSecond;
}

before(async () => {
  scratch = await mkdtemp(join(tmpdir(), 'novacron-migration-'));
  const image = await ensureTestGuestImage({ log: (msg) => process.stderr.write(`${msg}\n`) });
  hypervisors = await startLocalHypervisors({ count: 2, baseDir: join(scratch, 'hv') });
  const [a, b] = hypervisors.hosts.map((h) => ({
    hostId: h.hostId,
    uri: h.uri,
    conn: new LibvirtConnection({ uri: h.uri }),
  }));
  assert.ok(a && b);
  [h1, h2] = [a, b];
  await boot(idle, IDLE, image.path);
  await boot(busy, BUSY, image.path);
});

after(async () => {
  await hypervisors?.stop();
  if (scratch) await rm(scratch, { recursive: true, force: true });
});

test('dirty rate: none measured yet, then clearly more on the busy guest than on the idle one', async (t) => {
  const started = Date.now();
  assert.deepEqual(await h1.conn.domainGetDirtyRate({ name: idle.name }), {
    status: 'unstarted',
    bytesPerSecond: 0,
    periodSeconds: 0,
  });
  const idleRate = await measureDirtyRate(h1, idle.name);
  const busyRate = await measureDirtyRate(h1, busy.name);
  t.diagnostic(
    `dirty rate: idle ${idleRate / MiB} MiB/s, busy ${busyRate / MiB} MiB/s (asked ${BUSY.dirtyMiBps}), ` +
      `both measured in ${Date.now() - started} ms`,
  );
  // Page sampling sees few pages of a 32 MiB working set in 128 MiB, and TCG falls behind the asked rate.
  assert.ok(busyRate >= 4 * MiB && busyRate > 4 * idleRate, `busy ${busyRate} B/s against idle ${idleRate} B/s`);
});

test('the idle guest moves to host-2 and back, with libvirt’s completed-job figures each way', async (t) => {
  for (const [from, to] of [
    [h1, h2],
    [h2, h1],
  ] as const) {
    const { input, consoleLog } = await hop(idle, from, to);
    await from.conn.domainMigrateToURI3({ ...input, maxDowntimeMs: 300 });
    await assertMoved(idle, from, to, consoleLog);
    // libvirt keeps the finished job's figures where the domain now lives (the source no longer has it).
    const done = migrationJobSample(await to.conn.domainGetJobStats({ name: idle.name, completed: true }));
    t.diagnostic(
      `${from.hostId} → ${to.hostId}: ${done.timeElapsedMs} ms, downtime ${done.downtimeMs} ms, ` +
        `${(done.dataProcessedBytes / MiB).toFixed(1)} MiB in ${done.pass} passes`,
    );
    assert.equal(done.state, 'completed');
    assert.ok(done.downtimeMs !== undefined && done.downtimeMs < done.timeElapsedMs);
    assert.ok(done.timeElapsedMs > 0 && done.dataProcessedBytes > 0 && done.dataRemainingBytes === 0);
    assert.ok(done.dataTotalBytes >= MEMORY_MIB * MiB);
  }
});

test('libvirt’s defaults as QEMU sees them: unlimited bandwidth for the job, QEMU’s own 300 ms downtime', async (t) => {
  const idleParams = await qemuMigrationParameters(h1, busy.name);
  assert.equal(await h1.conn.domainMigrateGetMaxSpeed({ name: busy.name }), UNLIMITED_MIGRATION_BANDWIDTH_MIBPS);
  assert.equal(await h1.conn.domainMigrateGetMaxDowntime({ name: busy.name }), 300);
  const { input, consoleLog } = await hop(busy, h1, h2);
  const job = h1.conn.domainMigrateToURI3(input);
  const settled = job.then(
    () => undefined,
    (err: unknown) => err,
  );
  // Polled until the stream runs: during the job's preparation QEMU still has its own defaults.
  let during: { maxBandwidth: bigint; downtimeMs: number } | undefined;
  let finished = false;
  void settled.then(() => (finished = true));
  while (!finished && during === undefined) {
    const seen = await qemuMigration(h1, busy.name).catch(() => undefined);
    if (seen?.active) during = { maxBandwidth: seen.maxBandwidth, downtimeMs: seen.downtimeMs };
  }
  assert.equal(await settled, undefined);
  await assertMoved(busy, h1, h2, consoleLog);
  t.diagnostic(
    `QEMU before the job: max-bandwidth ${idleParams.maxBandwidth} B/s, downtime-limit ${idleParams.downtimeMs} ms; ` +
      `during: ${during ? `${during.maxBandwidth} B/s, ${during.downtimeMs} ms` : 'not caught (the job was quicker)'}`,
  );
  const done = migrationJobSample(await h2.conn.domainGetJobStats({ name: busy.name, completed: true }));
  t.diagnostic(`busy h1 → h2: ${done.timeElapsedMs} ms, downtime ${done.downtimeMs} ms, ${done.pass} passes`);
  assert.deepEqual(idleParams, { maxBandwidth: BigInt(QEMU_DEFAULT_MAX_BANDWIDTH), downtimeMs: 300 });
  assert.ok(during, 'the job ended before a sample of QEMU’s parameters caught it running');
  assert.equal(during.maxBandwidth, BigInt(UNLIMITED_MIGRATION_BANDWIDTH_MIBPS) * BigInt(MiB));
  assert.equal(during.downtimeMs, 300);
});

test('a busy guest that cannot converge under a cap: sampled, steered, refused post-copy, aborted on the source', async (t) => {
  const { input } = await hop(busy, h2, h1);
  const controller = new AbortController();
  const settled = h2.conn
    .domainMigrateToURI3({ ...input, bandwidthMiBps: 8, maxDowntimeMs: 400, signal: controller.signal })
    .then(
      () => undefined,
      (err: unknown) => err,
    );
  // Until pass 1 (all memory at 8 MiB/s) is over and QEMU has measured a dirty rate.
  const second = await waitUntil(
    'a second pre-copy pass',
    async () => {
      const sample = migrationJobSample(await h2.conn.domainGetJobStats({ name: busy.name }));
      return sample.state === 'running' && sample.pass >= 2 && sample.memoryDirtyRateBytesPerSecond > 0
        ? sample
        : undefined;
    },
    { timeoutMs: MIGRATION_TIMEOUT_MS, intervalMs: 500 },
  );
  t.diagnostic(`pass ${second.pass}: ${JSON.stringify(second)}`);
  assert.equal(second.phase, 'precopy');
  assert.ok(second.dataRemainingBytes > 0 && second.memoryBytesPerSecond <= 12 * MiB);
  // Set before the job, the downtime held; the cap is the job's.
  assert.deepEqual(await qemuMigrationParameters(h2, busy.name), { maxBandwidth: BigInt(8 * MiB), downtimeMs: 400 });

  await h2.conn.domainMigrateSetMaxDowntime({ name: busy.name, downtimeMs: 600 });
  await h2.conn.domainMigrateSetMaxSpeed({ name: busy.name, bandwidthMiBps: 4 });
  assert.equal(await h2.conn.domainMigrateGetMaxDowntime({ name: busy.name }), 600);
  assert.equal(await h2.conn.domainMigrateGetMaxSpeed({ name: busy.name }), 4);
  assert.deepEqual(await qemuMigrationParameters(h2, busy.name), { maxBandwidth: BigInt(4 * MiB), downtimeMs: 600 });
  await assert.rejects(h2.conn.domainMigrateStartPostCopy({ name: busy.name }), LibvirtInvalidStateError);

  const later = await waitUntil(
    'another pass at 4 MiB/s',
    async () => {
      const sample = migrationJobSample(await h2.conn.domainGetJobStats({ name: busy.name }));
      return sample.pass >= second.pass + 1 ? sample : undefined;
    },
    { timeoutMs: MIGRATION_TIMEOUT_MS, intervalMs: 500 },
  );
  t.diagnostic(`pass ${later.pass}: ${JSON.stringify(later)}`);
  // The guest rewrites its whole 32 MiB working set well within a pass (libvirt's sampling saw 26-32 MiB/s), so each
  // pass leaves about 32 MiB: 8 s at 4 MiB/s against a 600 ms budget. QEMU's memory_dirty_rate is distinct pages per
  // pass, so it reads only about working set / pass time here (4 MiB/s), not the guest's write rate.
  assert.equal(later.state, 'running', 'the job has not converged');

  const beatsBefore = await heartbeats(busy);
  controller.abort();
  const err = await settled;
  assert.ok(err instanceof LibvirtMigrationAbortedError, `aborted: ${String(err)}`);
  t.diagnostic(`abort: ${err.message}`);
  assert.equal(await h2.conn.domainGetState({ name: busy.name }), DomainState.running);
  await assert.rejects(h1.conn.domainLookupByName({ name: busy.name }), LibvirtNotFoundError);
  const beatsAfter = await moreHeartbeats(busy, 2);
  assert.ok(beatsAfter.length > beatsBefore.length, 'the guest runs on after the abort');
  // libvirt puts back the parameters it found at the start of the job: the downtime set just before it (not QEMU's
  // default), and QEMU's own bandwidth. The downtime raised mid-job does not outlive the job.
  const restored = await qemuMigrationParameters(h2, busy.name);
  t.diagnostic(`after the abort: max-bandwidth ${restored.maxBandwidth} B/s, downtime-limit ${restored.downtimeMs} ms`);
  assert.deepEqual(restored, { maxBandwidth: BigInt(QEMU_DEFAULT_MAX_BANDWIDTH), downtimeMs: 400 });
});

test('post-copy: armed at the start, switched during the job, the busy guest completes on the target', async (t) => {
  const { input, consoleLog } = await hop(busy, h2, h1);
  const settled = h2.conn.domainMigrateToURI3({ ...input, bandwidthMiBps: 8, postCopy: true }).then(
    () => undefined,
    (err: unknown) => err,
  );
  await waitUntil(
    'the pre-copy stream',
    async () => migrationJobSample(await h2.conn.domainGetJobStats({ name: busy.name })).dataProcessedBytes > 0,
    { timeoutMs: MIGRATION_TIMEOUT_MS, intervalMs: 200 },
  );
  await h2.conn.domainMigrateStartPostCopy({ name: busy.name });
  // libvirt marks the switch when QEMU reports post-copy active, a moment after the call returns; post-copy then
  // pulls the rest uncapped, so the job may be over before a sample shows the phase.
  const sample = await waitUntil(
    'the post-copy phase or the end of the job',
    async () => {
      const current = await h2.conn
        .domainGetJobStats({ name: busy.name })
        .then(migrationJobSample)
        .catch(() => undefined);
      return current === undefined || current.state !== 'running' || current.phase === 'postcopy'
        ? { current }
        : undefined;
    },
    { timeoutMs: MIGRATION_TIMEOUT_MS, intervalMs: 100 },
  );
  t.diagnostic(`after the switch: ${JSON.stringify(sample.current)}`);
  // At 8 MiB/s this guest never converges in pre-copy (the test above), so completing means post-copy did it.
  assert.equal(await settled, undefined);
  await assertMoved(busy, h2, h1, consoleLog);
  const completed = migrationJobSample(await h1.conn.domainGetJobStats({ name: busy.name, completed: true }));
  t.diagnostic(`completed-job statistics on the target after post-copy: state ${completed.state}`);
});
