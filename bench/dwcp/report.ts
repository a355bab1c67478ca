/** The DWCP benchmark's ratios, its compact results file, and the docs sections written from that file. */
import { runLine } from '../results';
import type { RunMetadata } from '../run-metadata';
import type { DwcpDataset } from './dataset';
import { renderGoalsTable } from './goals';
import { findRun, isStreamScenario, type DwcpBenchRun } from './measure';

export interface DwcpResults {
  /** Absent from files written before the run record (bench/run-metadata.ts) existed. */
  run?: RunMetadata;
  benchmark: 'dwcp';
  date: string;
  machine?: { cpus: number; cpuModel: string; memoryGiB: number };
  dataset: DwcpDataset;
  links: Array<{ name: string; rateMbps: number | null }>;
  iterations?: number;
  /** Absent from files written before the chunk-hash agreement: those runs used dwcp-native's cutter and sha256. */
  implementations?: { chunking: string; dataExtents: string; chunkHashes: string[] };
  runs: DwcpBenchRun[];
}

/** Results stay a few KB: figures rounded to 4 significant digits, one line per run. */
export function compactJson(results: { runs: DwcpBenchRun[] } & Record<string, unknown>): string {
  const round = (_key: string, value: unknown): unknown =>
    typeof value === 'number' && !Number.isInteger(value) ? Number(value.toPrecision(4)) : value;
  const { runs, ...rest } = results;
  const head = JSON.stringify(rest, round, 1).replace(/\n}$/, '');
  const lines = runs.map((run) => `  ${JSON.stringify(run, round)}`);
  return `${head},\n "runs": [\n${lines.join(',\n')}\n ]\n}\n`;
}

export function fmtBytes(n: number): string {
  return `${(n / 1e6).toFixed(1)}`;
}

/** The throughput rows; stream-latency rows follow in a table of their own. */
export function renderTable(runs: DwcpBenchRun[]): string {
  const lines = [
    '| link | tool | copy | s (median) | logical MB/s | wire MB | CPU s (send + recv) | × raw | × zstd | × rsync | wire / rsync | load |',
    '| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
  ];
  for (const r of runs.filter((x) => x.latencyMs === undefined)) {
    const vs = (name: string, key: 'speedup' | 'wireRatio'): string => {
      const v = r.vs?.[name]?.[key];
      return v === undefined ? '' : v.toFixed(2);
    };
    lines.push(
      `| ${r.link} | ${r.tool} | ${r.scenario} | ${r.seconds.toFixed(1)} | ${r.logicalMBps.toFixed(1)} | ${fmtBytes(r.wireBytes)} | ` +
        `${r.senderCpuSeconds.toFixed(1)} + ${r.receiverCpuSeconds.toFixed(1)} | ${vs('raw-tcp', 'speedup')} | ` +
        `${vs('zstd-1-nc', 'speedup')} | ${vs('rsync', 'speedup')} | ${vs('rsync', 'wireRatio')} | ${r.loadAvg1.toFixed(1)} |`,
    );
  }
  const latency = runs.filter((x) => x.latencyMs !== undefined);
  if (latency.length === 0) return lines.join('\n');
  lines.push(
    '',
    'stream-latency: milliseconds from a 4 KiB write into the source to its arrival at the sink, one write every 5 ms.',
    '',
    '| link | tool | writes | p50 ms | p99 ms | max ms | CPU s (send + recv) | load |',
    '| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |',
  );
  for (const r of latency) {
    const l = r.latencyMs!;
    lines.push(
      `| ${r.link} | ${r.tool} | ${l.writes} | ${l.p50.toFixed(2)} | ${l.p99.toFixed(2)} | ${l.max.toFixed(2)} | ` +
        `${r.senderCpuSeconds.toFixed(1)} + ${r.receiverCpuSeconds.toFixed(1)} | ${r.loadAvg1.toFixed(1)} |`,
    );
  }
  return lines.join('\n');
}

/**
 * Each run against each baseline on the same link; delta runs compare with rsync's delta, others with first copies,
 * and stream runs with the direct connection (raw-tcp) carrying the same stream.
 */
export function addRatios(runs: DwcpBenchRun[]): void {
  for (const run of runs) {
    const vs: NonNullable<DwcpBenchRun['vs']> = {};
    const stream = isStreamScenario(run.scenario);
    for (const base of stream ? (['raw-tcp'] as const) : (['raw-tcp', 'zstd-1-nc', 'rsync'] as const)) {
      const scenario = stream ? run.scenario : base === 'rsync' && run.scenario !== 'first' ? 'delta' : 'first';
      const baseline = findRun({ runs, link: run.link, tool: base, scenario });
      if (baseline === undefined || baseline === run) continue;
      vs[base] = {
        speedup: run.logicalMBps / baseline.logicalMBps,
        wireRatio: run.wireBytes / baseline.wireBytes,
      };
    }
    run.vs = vs;
  }
}

function runLineOf(file: string, r: DwcpResults): string {
  return r.run
    ? runLine({ file, run: r.run })
    : runLine({
        file,
        legacy: {
          command: 'npm run bench -- dwcp',
          date: r.date,
          machine: r.machine ?? { cpus: 0, memoryGiB: 0 },
        },
      });
}

/** The full table, for docs/dwcp.md. */
export function renderDwcpTable(file: string, r: DwcpResults): string {
  const iterations = r.iterations ?? r.runs[0]?.secondsAll?.length ?? 1;
  return [
    runLineOf(file, r),
    '',
    `Median of ${iterations} interleaved iterations. "load" is the 1-minute load average when the median run ` +
      'started; the machine was shared with other work.',
    '',
    `Dataset: ${r.dataset.description}.`,
    '',
    ...(r.implementations ? [implementationsLine(r.implementations), ''] : []),
    renderTable(r.runs),
  ].join('\n');
}

/** Which code the peers ran, so a run on the TypeScript fallbacks says so. */
function implementationsLine(i: NonNullable<DwcpResults['implementations']>): string {
  const code = (name: string): string => (name === 'native' ? 'dwcp-native' : 'the TypeScript fallback');
  return (
    `The DWCP peers ran chunk cutting in ${code(i.chunking)}, data extents (holes) in ${code(i.dataExtents)}, and ` +
    `offered the chunk hashes ${i.chunkHashes.join(', ')} (the first each receiver could check was used).`
  );
}

/** The goals judged on the run, for docs/dwcp.md. */
export function renderDwcpGoals(file: string, r: DwcpResults): string {
  return [runLineOf(file, r), '', renderGoalsTable(r)].join('\n');
}

const find = (r: DwcpResults, link: string, tool: string, scenario: string): DwcpBenchRun | undefined =>
  findRun({ runs: r.runs, link, tool, scenario });

/** The headline comparisons, for docs/benchmarks.md: each a row of the docs/dwcp.md table. */
export function renderDwcpSummary(file: string, r: DwcpResults): string {
  const capped = r.links.find((l) => l.rateMbps !== null);
  const rows: string[] = [];
  const add = (what: string, run: DwcpBenchRun | undefined, figure: (x: DwcpBenchRun) => string): void => {
    if (run) rows.push(`| ${what} | ${run.tool} | ${run.seconds.toFixed(1)} s | ${figure(run)} | ${run.loadAvg1} |`);
  };
  const ratio = (x: DwcpBenchRun, base: string): string => `${x.vs?.[base]?.speedup.toFixed(2) ?? '?'}× ${base}`;
  add('loopback, first copy', find(r, 'loopback', 'dwcp-datacenter', 'first'), (x) =>
    [ratio(x, 'raw-tcp'), ratio(x, 'rsync')].join(', '),
  );
  add('loopback, v1→v2 delta', find(r, 'loopback', 'dwcp-datacenter', 'delta'), (x) => ratio(x, 'rsync'));
  const linkMBps = (capped?.rateMbps ?? 0) / 8;
  const overLink = (x: DwcpBenchRun): string =>
    `${x.logicalMBps.toFixed(1)} MB/s, ${(x.logicalMBps / linkMBps).toFixed(2)}× the link`;
  if (capped) {
    for (const tool of ['dwcp-datacenter', 'dwcp-auto']) {
      add(
        `${capped.name}, first copy`,
        find(r, capped.name, tool, 'first'),
        (x) => `${overLink(x)}; ${ratio(x, 'rsync')}`,
      );
    }
    add(`${capped.name}, v1→v2 delta`, find(r, capped.name, 'dwcp-auto', 'delta'), (x) => {
      const wire = x.vs?.rsync?.wireRatio.toFixed(2) ?? '?';
      return `${ratio(x, 'rsync')}, ${wire}× rsync's bytes on the wire`;
    });
  }
  // Stream mode: a datacenter migration on loopback, an internet one on the capped link.
  for (const scenario of ['stream-random', 'stream-random-4ch', 'stream-image'])
    add(`loopback, ${scenario}`, find(r, 'loopback', 'dwcp-datacenter', scenario), (x) => ratio(x, 'raw-tcp'));
  const rawLatency = find(r, 'loopback', 'raw-tcp', 'stream-latency')?.latencyMs;
  add('loopback, stream-latency', find(r, 'loopback', 'dwcp-datacenter', 'stream-latency'), (x) => {
    const l = x.latencyMs;
    const raw = rawLatency ? ` (raw-tcp ${rawLatency.p50.toFixed(2)} / ${rawLatency.p99.toFixed(2)})` : '';
    return l ? `p50 ${l.p50.toFixed(2)} ms, p99 ${l.p99.toFixed(2)} ms${raw}` : '?';
  });
  if (capped) {
    for (const scenario of ['stream-random', 'stream-random-4ch', 'stream-image']) {
      add(
        `${capped.name}, ${scenario}`,
        find(r, capped.name, 'dwcp-auto', scenario),
        (x) => `${overLink(x)}; ${ratio(x, 'raw-tcp')}`,
      );
    }
  }
  return [
    runLineOf(file, r),
    '',
    'Rows of the full table in [dwcp.md](dwcp.md#benchmark):',
    '',
    '| link, copy | tool | s (median) | against the baselines | load |',
    '| --- | --- | ---: | --- | ---: |',
    ...rows,
    '',
    renderGoalsTable(r),
  ].join('\n');
}
