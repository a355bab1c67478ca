/**
 * `npm run bench -- libvirt-driver`: the driver's per-call latency and the scale check (bench/libvirt-driver/
 * measure-driver.ts) for each domain type and each hosts × guests size, written to bench/results/libvirt-driver.json
 * and to the sections of docs/libvirt-driver.md and docs/benchmarks.md that quote it.
 *
 *   NOVACRON_BENCH_DRIVER_SCALE=2x20,3x50 NOVACRON_BENCH_DRIVER_TYPES=kvm,qemu npm run bench -- libvirt-driver
 */
import path from 'node:path';
import { detectDomainType, DomainType } from '../../native/libvirt';
import { assertHypervisorBinaries } from '../../native/libvirt/harness';
import {
  readResults,
  runLine,
  writeResults,
  type Benchmark,
  type BenchRunInput,
  type BenchRunOutput,
} from '../results';
import type { RunMetadata } from '../run-metadata';
import type { Summary } from '../stats';
import { GUEST, measureLatency, measureScale, type LatencyResult, type ScaleResult } from './measure-driver';

interface DriverResults {
  run: RunMetadata;
  benchmark: 'libvirt-driver';
  guest: string;
  latency: LatencyResult[];
  scale: ScaleResult[];
}

function parseScale(value: string): Array<{ hosts: number; guests: number }> {
  return value.split(',').map((item) => {
    const match = /^(\d+)x(\d+)$/.exec(item.trim());
    if (!match) throw new Error(`NOVACRON_BENCH_DRIVER_SCALE: expected HOSTSxGUESTS, got ${item}`);
    return { hosts: Number(match[1]), guests: Number(match[2]) };
  });
}

function parseTypes(value: string | undefined): DomainType[] {
  // KVM where /dev/kvm opens, and TCG always: they differ most in how fast many guests start and stop.
  if (value === undefined || value === '') return [...new Set([detectDomainType(), DomainType.qemu])];
  return value.split(',').map((t) => {
    if (t !== DomainType.kvm && t !== DomainType.qemu) throw new Error(`NOVACRON_BENCH_DRIVER_TYPES: ${t}`);
    return t;
  });
}

const log = (line: string): void => {
  process.stdout.write(`  ${line}\n`);
};

async function run(input: BenchRunInput): Promise<BenchRunOutput> {
  assertHypervisorBinaries();
  const sizes = parseScale(process.env.NOVACRON_BENCH_DRIVER_SCALE ?? '2x20,3x50');
  const types = parseTypes(process.env.NOVACRON_BENCH_DRIVER_TYPES);
  const latency: LatencyResult[] = [];
  for (const domainType of types) {
    latency.push(await measureLatency(domainType));
    log(`${domainType}: per-call domainGetState p50 ${latency.at(-1)!.perCallMs.domainGetState.p50} ms`);
  }
  const scale: ScaleResult[] = [];
  for (const size of sizes) {
    for (const domainType of types) {
      const result = await measureScale({ ...size, domainType });
      if (!result.allRunning) throw new Error(`scale ${JSON.stringify(result)}: not every guest ran`);
      log(
        `${size.hosts} hosts × ${size.guests} guests (${domainType}): created in ${result.createDefineStartAllMs} ms, ` +
          `destroyed in ${result.destroyAllMs} ms`,
      );
      scale.push(result);
    }
  }
  const results: Omit<DriverResults, 'run'> = { benchmark: 'libvirt-driver', guest: GUEST, latency, scale };
  const file = await writeResults({
    dir: input.outDir,
    name: 'libvirt-driver.json',
    recorder: input.recorder,
    results,
  });
  return { file, publish: true };
}

const ms = (s: Summary): string => `${s.p50.toFixed(1)} ms (p90 ${s.p90.toFixed(1)} ms)`;
const secs = (value: number): string => `${(value / 1000).toFixed(1)} s`;

function latencyTable(r: DriverResults): string {
  const rows = r.latency.flatMap((l) => [
    `| ${l.domainType} | \`virsh -c URI <cmd>\`, one process per call (the driver) | domainGetState ` +
      `${ms(l.perCallMs.domainGetState)}; domainGetInfo ${ms(l.perCallMs.domainGetInfo)}; listAllDomains ` +
      `${ms(l.perCallMs.listAllDomains)} |`,
    `| ${l.domainType} | one long \`virsh\` session fed on stdin | \`domstate\` ${ms(l.sessionMs)} |`,
    `| ${l.domainType} | start / destroy of a stopped guest through the driver | ${ms(l.domainCreateMs)} / ` +
      `${ms(l.domainDestroyMs)} |`,
  ]);
  return [
    `One harness host, one guest (${r.guest}); 100 calls after one warm-up (10 starts and destroys).`,
    '',
    '| type | mechanism | p50 (p90) per call |',
    '| --- | --- | --- |',
    ...rows,
  ].join('\n');
}

function scaleTable(r: DriverResults): string {
  const rows = r.scale.map(
    (s) =>
      `| ${s.hosts} | ${s.guests} | ${s.domainType} | ${secs(s.createDefineStartAllMs)} | ` +
      `${s.allRunning ? 'yes' : 'no'} (${s.runningPerHost.join(' + ')}) | ${s.listAllDomainsLoadedMs.p50.toFixed(1)} ms | ` +
      `${s.qemuRssPerGuestMiB} MiB | ${s.libvirtdRssTotalMiB} MiB | ${s.memAvailableDropMiB} MiB | ` +
      `${secs(s.destroyAllMs)} | ${secs(s.harnessStartMs)} / ${s.harnessStopMs} ms |`,
  );
  return [
    `Tiny guests (${r.guest}) created, defined and started at once, round-robin over fresh harness hosts; then ` +
      '`listAllDomains` confirms each runs, and all are destroyed at once. "MemAvailable drop" is machine-wide, so ' +
      'other work on the machine moves it.',
    '',
    '| hosts | guests | type | create+define+start all | all running | listAllDomains p50, guests running | QEMU RSS per guest | libvirtd RSS, total | MemAvailable drop | destroy all | harness start / stop |',
    '| ---: | ---: | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |',
    ...rows,
  ].join('\n');
}

function memoryLine(r: DriverResults): string {
  const m = r.latency[0]?.memoryViewsMiB;
  if (!m) return '';
  return (
    `Memory of one harness host as libvirt reports it: \`nodeGetInfo().memoryKiB\` ${m.nodeGetInfo} MiB and ` +
    `\`nodeGetFreeMemory()\` ${m.nodeGetFreeMemory} MiB, against \`nodeGetMemoryStats()\` ${m.nodeGetMemoryStats.total} ` +
    `MiB total and ${m.nodeGetMemoryStats.free} MiB free.`
  );
}

const section = (name: string, render: (file: string, r: DriverResults) => string, doc: string) => ({
  doc,
  name,
  render: async (file: string) => render(file, await readResults<DriverResults>(file)),
});

export const libvirtDriverBenchmark: Benchmark = {
  name: 'libvirt-driver',
  run,
  publishedResults: async (outDir) => path.join(outDir, 'libvirt-driver.json'),
  sections: [
    section(
      'libvirt-driver-latency',
      (file, r) => [runLine({ file, run: r.run }), '', latencyTable(r)].join('\n'),
      'docs/libvirt-driver.md',
    ),
    section(
      'libvirt-driver-scale',
      (file, r) => [runLine({ file, run: r.run }), '', scaleTable(r), '', memoryLine(r)].join('\n'),
      'docs/libvirt-driver.md',
    ),
    section(
      'libvirt-driver',
      (file, r) => [runLine({ file, run: r.run }), '', latencyTable(r), '', scaleTable(r)].join('\n'),
      'docs/benchmarks.md',
    ),
  ],
};
