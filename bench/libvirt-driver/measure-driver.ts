/**
 * Measures the libvirt driver on local harness hypervisors: the latency of its virsh-per-call transport (and of one
 * long virsh session fed on stdin, the faster alternative it turned down), and a scale check that creates tiny
 * guests concurrently across the hosts, confirms they all run, and destroys them. It measures; it asserts nothing
 * about speed.
 */
import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildDomainXml, DiskImages, DomainState, LibvirtConnection, type DomainType } from '../../native/libvirt';
import { startLocalHypervisors, type LocalHypervisors } from '../../native/libvirt/harness';
import { summarize, type Summary } from '../stats';

const LATENCY_SAMPLES = 100;
const LIFECYCLE_SAMPLES = 10;
const GUEST_MEMORY_MIB = 64;
const DISK_BYTES = 64 * 1024 * 1024;

export interface ScaleConfig {
  hosts: number;
  guests: number;
  domainType: DomainType;
}

export interface ScaleResult extends ScaleConfig {
  harnessStartMs: number;
  harnessStopMs: number;
  createDefineStartAllMs: number;
  runningPerHost: number[];
  allRunning: boolean;
  /** listAllDomains on the first host while its share of the guests runs: batching makes it cost one call. */
  listAllDomainsLoadedMs: Summary;
  qemuProcesses: number;
  qemuRssPerGuestMiB: number;
  libvirtdRssTotalMiB: number;
  /** Machine-wide MemAvailable before the harness started minus with every guest running: other work moves it. */
  memAvailableDropMiB: number;
  destroyAllMs: number;
}

export interface LatencyResult {
  domainType: DomainType;
  /** One virsh process per call, as the driver does it. */
  perCallMs: Record<'domainGetState' | 'domainGetInfo' | 'listAllDomains', Summary>;
  /** One virsh process fed commands on stdin, each answered before the next is sent. */
  sessionMs: Summary;
  /** Start of a defined, stopped guest, and its destroy, through the driver. */
  domainCreateMs: Summary;
  domainDestroyMs: Summary;
  /** The same host's memory seen three ways: they disagree on this kind of VM (see docs/libvirt-driver.md). */
  memoryViewsMiB: {
    nodeGetInfo: number;
    nodeGetFreeMemory: number;
    nodeGetMemoryStats: { total: number; free: number };
  };
}

const round2 = (ms: number): number => Math.round(ms * 100) / 100;
const mib = (kib: number): number => Math.round(kib / 1024);

async function time(fn: () => Promise<unknown>): Promise<number> {
  const start = performance.now();
  await fn();
  return performance.now() - start;
}

async function samples(count: number, fn: () => Promise<unknown>): Promise<Summary> {
  await fn();
  const values: number[] = [];
  for (let i = 0; i < count; i++) values.push(round2(await time(fn)));
  return summarize(values);
}

async function memAvailableKiB(): Promise<number> {
  const meminfo = await readFile('/proc/meminfo', 'utf8');
  return Number(/^MemAvailable:\s+(\d+)/m.exec(meminfo)?.[1] ?? 0);
}

/**
 * Resident memory of this run's processes: those named `prefix` whose command line mentions `marker` (the run's
 * scratch directory), so that other guests and daemons on a shared machine do not count.
 */
async function rssMiB(prefix: string, marker: string): Promise<{ processes: number; totalMiB: number }> {
  let processes = 0;
  let kib = 0;
  for (const pid of (await readdir('/proc')).filter((p) => /^\d+$/.test(p))) {
    const status = await readFile(`/proc/${pid}/status`, 'utf8').catch(() => '');
    if (!(/^Name:\s+(\S+)/m.exec(status)?.[1] ?? '').startsWith(prefix)) continue;
    const cmdline = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
    if (!cmdline.includes(marker)) continue;
    processes += 1;
    kib += Number(/^VmRSS:\s+(\d+)/m.exec(status)?.[1] ?? 0);
  }
  return { processes, totalMiB: mib(kib) };
}

/** Round trips through one interactive virsh: each command is followed by an `echo` marker the reply ends with. */
async function sessionLatency(uri: string, name: string): Promise<Summary> {
  const virsh = spawn('virsh', ['-c', uri], {
    stdio: ['pipe', 'pipe', 'inherit'],
    env: { ...process.env, LC_ALL: 'C' },
  });
  let buffer = '';
  let waiting: { marker: string; resolve: () => void } | undefined;
  virsh.stdout.on('data', (chunk: Buffer) => {
    buffer += chunk.toString();
    if (waiting && buffer.includes(waiting.marker)) {
      buffer = '';
      waiting.resolve();
    }
  });
  let n = 0;
  const call = () =>
    new Promise<void>((resolve) => {
      const marker = `novacron-session-${n++}`;
      waiting = { marker, resolve };
      virsh.stdin.write(`domstate ${name}\necho ${marker}\n`);
    });
  try {
    return await samples(LATENCY_SAMPLES, call);
  } finally {
    virsh.stdin.end();
    await new Promise((resolve) => virsh.once('close', resolve));
  }
}

function guestMaker(input: { imageRoot: string; domainType: DomainType }) {
  const images = new DiskImages({ imageRoot: input.imageRoot });
  return async (conn: LibvirtConnection, name: string, start = true): Promise<void> => {
    const path = join(input.imageRoot, name, 'root.qcow2');
    await images.create({ path, format: 'qcow2', sizeBytes: DISK_BYTES });
    const uuid = randomUUID();
    const xml = buildDomainXml({
      name,
      uuid,
      vcpus: 1,
      memoryMiB: GUEST_MEMORY_MIB,
      disks: [{ path, format: 'qcow2', target: 'vda' }],
      networks: [],
      metadata: { vmId: uuid },
      imageRoot: input.imageRoot,
      domainType: input.domainType,
    });
    await conn.domainDefineXML({ xml });
    if (start) await conn.domainCreate({ name });
  };
}

export const GUEST = `1 vCPU, ${GUEST_MEMORY_MIB} MiB, an empty ${DISK_BYTES / 2 ** 20} MiB qcow2 disk, no OS`;

interface Harness {
  hypervisors: LocalHypervisors;
  scratch: string;
  startMs: number;
  /** Stops the hosts now and says how long it took; the cleanup then does not stop them again. */
  stopTimed: () => Promise<number>;
}

/** A scratch directory with `count` harness hosts for `body`; both are gone afterwards, however `body` ended. */
async function withHarness<T>(count: number, body: (harness: Harness) => Promise<T>): Promise<T> {
  const scratch = await mkdtemp(join(tmpdir(), 'novacron-bench-driver-'));
  let hypervisors: LocalHypervisors | undefined;
  let stopped: Promise<void> | undefined;
  try {
    const started = performance.now();
    const hosts = await startLocalHypervisors({ count, baseDir: join(scratch, 'hv') });
    hypervisors = hosts;
    const startMs = Math.round(performance.now() - started);
    return await body({
      hypervisors: hosts,
      scratch,
      startMs,
      stopTimed: async () => {
        const stopping = performance.now();
        await (stopped ??= hosts.stop());
        return Math.round(performance.now() - stopping);
      },
    });
  } finally {
    if (hypervisors) await (stopped ??= hypervisors.stop());
    await rm(scratch, { recursive: true, force: true });
  }
}

/** Per-call figures on one host with one guest, which the driver's transport decides. */
export async function measureLatency(domainType: DomainType): Promise<LatencyResult> {
  return withHarness(1, async ({ hypervisors, scratch }) => {
    const host = hypervisors.hosts[0]!;
    const conn = new LibvirtConnection({ uri: host.uri });
    const name = 'latency-probe';
    await guestMaker({ imageRoot: join(scratch, 'images'), domainType })(conn, name, false);
    const create: number[] = [];
    const destroy: number[] = [];
    for (let i = 0; i < LIFECYCLE_SAMPLES; i++) {
      create.push(round2(await time(() => conn.domainCreate({ name }))));
      destroy.push(round2(await time(() => conn.domainDestroy({ name }))));
    }
    await conn.domainCreate({ name });
    const perCallMs = {
      domainGetState: await samples(LATENCY_SAMPLES, () => conn.domainGetState({ name })),
      domainGetInfo: await samples(LATENCY_SAMPLES, () => conn.domainGetInfo({ name })),
      listAllDomains: await samples(LATENCY_SAMPLES, () => conn.listAllDomains()),
    };
    const sessionMs = await sessionLatency(host.uri, name);
    const stats = await conn.nodeGetMemoryStats();
    const memoryViewsMiB = {
      nodeGetInfo: mib((await conn.nodeGetInfo()).memoryKiB),
      nodeGetFreeMemory: Math.round((await conn.nodeGetFreeMemory()) / 2 ** 20),
      nodeGetMemoryStats: { total: mib(stats.totalKiB), free: mib(stats.freeKiB) },
    };
    await conn.domainDestroy({ name });
    return {
      domainType,
      perCallMs,
      sessionMs,
      domainCreateMs: summarize(create),
      domainDestroyMs: summarize(destroy),
      memoryViewsMiB,
    };
  });
}

/** `guests` tiny guests created, defined and started at once, spread round-robin over `hosts` fresh harness hosts. */
export async function measureScale(config: ScaleConfig): Promise<ScaleResult> {
  const availableBefore = await memAvailableKiB();
  return withHarness(config.hosts, async ({ hypervisors, scratch, startMs: harnessStartMs, stopTimed }) => {
    const connections = hypervisors.hosts.map((h) => new LibvirtConnection({ uri: h.uri }));
    const createGuest = guestMaker({ imageRoot: join(scratch, 'images'), domainType: config.domainType });
    const names = Array.from({ length: config.guests }, (_, i) => `scale-${String(i + 1).padStart(3, '0')}`);
    const hostOf = (i: number): LibvirtConnection => connections[i % connections.length]!;
    const createMs = await time(() => Promise.all(names.map((name, i) => createGuest(hostOf(i), name))));
    const runningPerHost = (
      await Promise.all(connections.map((c) => c.listAllDomains({ states: [DomainState.running] })))
    ).map((list) => list.length);
    const listAllDomainsLoadedMs = await samples(20, () => connections[0]!.listAllDomains());
    const qemu = await rssMiB('qemu-system', scratch);
    const libvirtd = await rssMiB('libvirtd', scratch);
    const availableWithGuests = await memAvailableKiB();
    const destroyMs = await time(() => Promise.all(names.map((name, i) => hostOf(i).domainDestroy({ name }))));
    const harnessStopMs = await stopTimed();
    return {
      ...config,
      harnessStartMs,
      harnessStopMs,
      createDefineStartAllMs: Math.round(createMs),
      runningPerHost,
      allRunning: runningPerHost.reduce((a, b) => a + b, 0) === config.guests,
      listAllDomainsLoadedMs,
      qemuProcesses: qemu.processes,
      qemuRssPerGuestMiB: Math.round((qemu.totalMiB / Math.max(1, qemu.processes)) * 10) / 10,
      libvirtdRssTotalMiB: libvirtd.totalMiB,
      memAvailableDropMiB: mib(availableBefore - availableWithGuests),
      destroyAllMs: Math.round(destroyMs),
    };
  });
}
