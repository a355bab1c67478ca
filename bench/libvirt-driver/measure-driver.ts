/**
 * Measures the driver on local harness hypervisors: per-call latency of the virsh transport, then a scale check
 * that creates tiny guests concurrently across the hosts and confirms they all run. It measures; it asserts
 * nothing about speed. docs/libvirt-driver.md quotes its output.
 *
 *   tsx bench/libvirt-driver/measure-driver.ts --hosts 2 --guests 20 [--domain-type qemu] [--out results.json]
 */
import { randomUUID } from 'node:crypto';
import { mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';

import { DiskImages } from '../../native/libvirt/disk-images';
import { DomainType, buildDomainXml, detectDomainType } from '../../native/libvirt/domain-xml';
import { startLocalHypervisors } from '../../native/libvirt/harness';
import { LibvirtConnection } from '../../native/libvirt/libvirt-connection';
import { DomainState } from '../../native/libvirt/libvirt-types';

const LATENCY_SAMPLES = 100;
const GUEST_MEMORY_MIB = 64;
const DISK_BYTES = 64 * 1024 * 1024;

interface Percentiles {
  medianMs: number;
  p95Ms: number;
}

async function time(fn: () => Promise<unknown>): Promise<number> {
  const start = performance.now();
  await fn();
  return performance.now() - start;
}

async function latency(fn: () => Promise<unknown>): Promise<Percentiles> {
  await fn();
  const samples: number[] = [];
  for (let i = 0; i < LATENCY_SAMPLES; i++) samples.push(await time(fn));
  samples.sort((a, b) => a - b);
  const at = (q: number): number => Math.round((samples[Math.floor(q * (samples.length - 1))] ?? 0) * 100) / 100;
  return { medianMs: at(0.5), p95Ms: at(0.95) };
}

async function memAvailableKiB(): Promise<number> {
  const meminfo = await readFile('/proc/meminfo', 'utf8');
  return Number(/^MemAvailable:\s+(\d+)/m.exec(meminfo)?.[1] ?? 0);
}

/** Resident memory of processes whose command name starts with `prefix`, in MiB. */
async function rssMiB(prefix: string): Promise<{ processes: number; totalMiB: number }> {
  let processes = 0;
  let kib = 0;
  for (const pid of (await readdir('/proc')).filter((p) => /^\d+$/.test(p))) {
    const status = await readFile(`/proc/${pid}/status`, 'utf8').catch(() => '');
    const name = /^Name:\s+(\S+)/m.exec(status)?.[1] ?? '';
    if (!name.startsWith(prefix)) continue;
    processes += 1;
    kib += Number(/^VmRSS:\s+(\d+)/m.exec(status)?.[1] ?? 0);
  }
  return { processes, totalMiB: Math.round(kib / 1024) };
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      hosts: { type: 'string', default: '2' },
      guests: { type: 'string', default: '20' },
      'domain-type': { type: 'string' },
      out: { type: 'string' },
    },
  });
  const hostCount = Number(values.hosts);
  const guestCount = Number(values.guests);
  const domainType = (values['domain-type'] as DomainType | undefined) ?? detectDomainType();
  if (!Object.values(DomainType).includes(domainType)) throw new Error(`--domain-type must be kvm or qemu`);

  const scratch = await mkdtemp(join(tmpdir(), 'novacron-measure-'));
  const imageRoot = join(scratch, 'images');
  const images = new DiskImages({ imageRoot });
  const availableBefore = await memAvailableKiB();
  const startedAt = performance.now();
  const hypervisors = await startLocalHypervisors({ count: hostCount, baseDir: join(scratch, 'hv') });
  const harnessStartMs = Math.round(performance.now() - startedAt);
  const connections = hypervisors.hosts.map((h) => new LibvirtConnection({ uri: h.uri }));

  const createGuest = async (conn: LibvirtConnection, name: string): Promise<void> => {
    const path = join(imageRoot, name, 'root.qcow2');
    await images.create({ path, format: 'qcow2', sizeBytes: DISK_BYTES });
    const xml = buildDomainXml({
      name,
      uuid: randomUUID(),
      vcpus: 1,
      memoryMiB: GUEST_MEMORY_MIB,
      disks: [{ path, format: 'qcow2', target: 'vda' }],
      networks: [],
      metadata: { vmId: name },
      imageRoot,
      domainType,
    });
    await conn.domainDefineXML({ xml });
    await conn.domainCreate({ name });
  };

  try {
    const probeHost = connections[0];
    if (!probeHost) throw new Error('no host started');
    await createGuest(probeHost, 'latency-probe');
    const perCall = {
      domainGetState: await latency(() => probeHost.domainGetState({ name: 'latency-probe' })),
      domainGetInfo: await latency(() => probeHost.domainGetInfo({ name: 'latency-probe' })),
      listAllDomains: await latency(() => probeHost.listAllDomains()),
    };
    await probeHost.domainDestroy({ name: 'latency-probe' });
    await probeHost.domainUndefine({ name: 'latency-probe' });

    const names = Array.from({ length: guestCount }, (_, i) => `scale-${String(i + 1).padStart(3, '0')}`);
    const hostOf = (i: number): LibvirtConnection => connections[i % connections.length] as LibvirtConnection;
    const createMs = await time(() => Promise.all(names.map((name, i) => createGuest(hostOf(i), name))));
    const running = (
      await Promise.all(connections.map((c) => c.listAllDomains({ states: [DomainState.running] })))
    ).map((list) => list.length);
    const qemu = await rssMiB('qemu-system');
    const libvirtd = await rssMiB('libvirtd');
    const availableWithGuests = await memAvailableKiB();
    const destroyMs = await time(() => Promise.all(names.map((name, i) => hostOf(i).domainDestroy({ name }))));

    const results = {
      measuredAt: new Date().toISOString(),
      hosts: hostCount,
      guests: guestCount,
      domainType,
      guestMemoryMiB: GUEST_MEMORY_MIB,
      harnessStartMs,
      perCallLatency: perCall,
      scale: {
        createDefineStartAllMs: Math.round(createMs),
        runningPerHost: running,
        allRunning: running.reduce((a, b) => a + b, 0) === guestCount,
        qemuProcesses: qemu.processes,
        qemuRssTotalMiB: qemu.totalMiB,
        qemuRssPerGuestMiB: Math.round((qemu.totalMiB / Math.max(1, qemu.processes)) * 10) / 10,
        libvirtdRssTotalMiB: libvirtd.totalMiB,
        hostMemAvailableDropMiB: Math.round((availableBefore - availableWithGuests) / 1024),
        destroyAllMs: Math.round(destroyMs),
      },
    };
    const json = JSON.stringify(results, null, 2);
    process.stdout.write(`${json}\n`);
    if (values.out) await writeFile(values.out, `${json}\n`);
  } finally {
    await hypervisors.stop();
    await rm(scratch, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exitCode = 1;
});
