/**
 * Builds (or takes from the cache) the novacron-testguest image and boots it on a local hypervisor: an idle guest
 * and one dirtying memory, each with its settings in SMBIOS OEM strings and its serial console logged to a file
 * here. Without libvirt, QEMU or the build's packages this fails (it does not skip), as the libvirt test does.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { copyFile, mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, test } from 'node:test';
import { promisify } from 'node:util';

import { DomainType, buildDomainXml } from '../native/libvirt/domain-xml';
import { startLocalHypervisors } from '../native/libvirt/harness';
import type { LocalHypervisors } from '../native/libvirt/harness';
import { LibvirtConnection } from '../native/libvirt/libvirt-connection';
import { ensureTestGuestImage } from './build';
import { parseConsoleLog, testGuestOemStrings } from './workload';
import type { ConsoleReport, TestGuestWorkload } from './workload';

// Bounds for a broken guest on a loaded 2-core TCG machine, not speed requirements (a boot takes seconds).
const FIRST_HEARTBEAT_TIMEOUT_MS = 90_000;
const DIRTY_RATE_CALC_SECONDS = 1;
const MEMORY_MIB = 256;
const BUSY: TestGuestWorkload = { dirtyMiBps: 150, workingSetMiB: 128 };

interface Guest {
  name: string;
  consoleLog: string;
  /** From domainCreate's return to the first heartbeat line in the console log. */
  firstHeartbeatMs: number;
}

let scratch: string;
let hypervisors: LocalHypervisors | undefined;
let host: LibvirtConnection;
let uri: string;
const guests = new Map<string, Guest>();

async function consoleReport(guest: Guest): Promise<ConsoleReport> {
  return parseConsoleLog(await readFile(guest.consoleLog, 'utf8').catch(() => ''));
}

async function waitForHeartbeats(guest: Guest, count: number, timeoutMs: number): Promise<ConsoleReport> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const report = await consoleReport(guest);
    if (report.error !== undefined) assert.fail(`${guest.name}'s workload refused to start: ${report.error}`);
    if (report.heartbeats.length >= count) return report;
    if (Date.now() > deadline) {
      const tail = (await readFile(guest.consoleLog, 'utf8').catch(() => '(no console log)')).slice(-2000);
      assert.fail(`${guest.name}: ${report.heartbeats.length} of ${count} heartbeats after ${timeoutMs} ms:\n${tail}`);
    }
    await sleep(100);
  }
}

async function bootGuest(name: string, workload: TestGuestWorkload, image: string): Promise<Guest> {
  const imageRoot = join(scratch, 'images');
  const disk = join(imageRoot, name, 'disk.raw');
  await mkdir(join(imageRoot, name), { recursive: true });
  // A copy per guest (16 MiB) keeps the cached image out of reach of a guest that writes to its disk.
  await copyFile(image, disk);
  const consoleLog = join(scratch, `${name}.console.log`);
  const xml = buildDomainXml({
    name,
    uuid: randomUUID(),
    vcpus: 1,
    memoryMiB: MEMORY_MIB,
    disks: [{ path: disk, format: 'raw', target: 'vda' }],
    networks: [],
    metadata: { vmId: `vm-${name}`, owner: 'test-guest' },
    imageRoot,
    // TCG, what the guest is made for: it needs no /dev/kvm, and where one is present but broken (seen here: a
    // "KVM internal error ... emulation failure" in SeaBIOS, a CPU without vmx) a KVM guest never boots.
    domainType: DomainType.qemu,
    consoleLogPath: consoleLog,
    oemStrings: testGuestOemStrings(workload),
  });
  await host.domainDefineXML({ xml, validate: true });
  await host.domainCreate({ name });
  const started = Date.now();
  const guest: Guest = { name, consoleLog, firstHeartbeatMs: Number.NaN };
  await waitForHeartbeats(guest, 1, FIRST_HEARTBEAT_TIMEOUT_MS);
  guest.firstHeartbeatMs = Date.now() - started;
  return guest;
}

/** libvirt's page-sampling measurement of a guest's dirty rate (MiB/s), run to completion. */
async function measureDirtyRate(name: string): Promise<number> {
  const virsh = (...args: string[]) => promisify(execFile)('virsh', ['-c', uri, ...args], { timeout: 30_000 });
  await virsh('domdirtyrate-calc', name, '--seconds', String(DIRTY_RATE_CALC_SECONDS));
  const deadline = Date.now() + 30_000 + DIRTY_RATE_CALC_SECONDS * 1000;
  for (;;) {
    const { stdout } = await virsh('domstats', name, '--dirtyrate');
    const field = (key: string) => new RegExp(`^\\s*dirtyrate\\.${key}=(\\S+)$`, 'm').exec(stdout)?.[1];
    // calc_status 2 is "measured" (0 unstarted, 1 measuring).
    if (field('calc_status') === '2') {
      const rate = Number(field('megabytes_per_second'));
      assert.ok(Number.isFinite(rate), `no dirty rate in:\n${stdout}`);
      return rate;
    }
    if (Date.now() > deadline) assert.fail(`dirty rate of ${name} not measured in time:\n${stdout}`);
    await sleep(200);
  }
}

before(async () => {
  scratch = await mkdtemp(join(tmpdir(), 'novacron-testguest-'));
  const image = await ensureTestGuestImage({ log: (msg) => process.stderr.write(`${msg}\n`) });
  hypervisors = await startLocalHypervisors({ count: 1, baseDir: join(scratch, 'hv') });
  uri = hypervisors.hosts[0]!.uri;
  host = new LibvirtConnection({ uri });
  // One after the other: each boot's time is then its own, not shared with the other's on two cores.
  guests.set('idle', await bootGuest('tg-idle', { dirtyMiBps: 0 }, image.path));
  guests.set('busy', await bootGuest('tg-busy', BUSY, image.path));
});

after(async () => {
  await hypervisors?.stop();
  if (scratch) await rm(scratch, { recursive: true, force: true });
});

test('the guest boots to its workload and its heartbeat counter rises every second', async (t) => {
  for (const guest of guests.values()) {
    t.diagnostic(`${guest.name}: first heartbeat ${guest.firstHeartbeatMs} ms after domainCreate`);
    assert.ok(guest.firstHeartbeatMs < FIRST_HEARTBEAT_TIMEOUT_MS);
    const before = await consoleReport(guest);
    const since = Date.now();
    const report = await waitForHeartbeats(guest, before.heartbeats.length + 3, 60_000);
    t.diagnostic(`${guest.name}: 3 more heartbeats in ${Date.now() - since} ms`);
    // Counted from 0 without a gap or a restart: what a migration test checks across the move.
    assert.deepEqual(
      report.heartbeats,
      report.heartbeats.map((_, i) => i),
    );
  }
});

test('the workload runs with the settings of its VM definition', async () => {
  assert.deepEqual((await consoleReport(guests.get('idle')!)).started?.dirtyMiBps, 0);
  const busy = (await consoleReport(guests.get('busy')!)).started;
  assert.equal(busy?.dirtyMiBps, BUSY.dirtyMiBps);
  assert.equal(busy?.workingSetMiB, BUSY.workingSetMiB);
});

test('libvirt measures a clearly higher dirty rate on the busy guest than on the idle one', async (t) => {
  const idle = await measureDirtyRate(guests.get('idle')!.name);
  const busy = await measureDirtyRate(guests.get('busy')!.name);
  t.diagnostic(`dirty rate: idle ${idle} MiB/s, busy ${busy} MiB/s (asked for ${BUSY.dirtyMiBps})`);
  // Generous: page sampling sees at most the working set per calc period, and TCG may fall behind the asked rate.
  assert.ok(busy >= 4 * idle, `busy ${busy} MiB/s is not 4× idle ${idle} MiB/s`);
  assert.ok(busy >= 16, `busy ${busy} MiB/s`);
});
