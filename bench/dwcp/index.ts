/**
 * DWCP benchmark: a real Debian ext4 image (v1, and a v2 with ~5% of file bytes changed) copied between two network
 * namespaces by a raw TCP stream (nc), `zstd -1 -T0 | nc`, an rsync daemon (first copy and v1→v2 delta) and DWCP in
 * datacenter, internet and probe-chosen ("auto") parameters (bench/dwcp/tools.ts), and stream runs as a live
 * migration carries them, DWCP stream mode against plain Node sockets (bench/dwcp/stream-tools.ts), over the
 * namespace's loopback and over a veth pair capped at 100 Mbit/s with `tc tbf` (bench/dwcp/netns.ts). Each run
 * reports logical MB/s, bytes on the wire (interface counters, both directions, headers included), CPU seconds of
 * both ends (/usr/bin/time), and ratios to each baseline (bench/dwcp/measure.ts, bench/dwcp/report.ts).
 *
 * Needs root (namespaces, tc, apt-get for missing tools). Writes bench/results/dwcp-<date>.json, the table in
 * docs/dwcp.md and the summary in docs/benchmarks.md.
 *
 * Focused runs while iterating (bench/run.ts takes only benchmark names, so the filters are environment variables):
 * NOVACRON_DWCP_LINKS=loopback NOVACRON_DWCP_TOOLS=raw-tcp,rsync,dwcp-datacenter NOVACRON_DWCP_SCENARIOS=first
 * NOVACRON_BENCH_ITERATIONS=1 npm run bench -- dwcp (stream runs: NOVACRON_DWCP_SCENARIOS=stream-random,
 * stream-random-4ch,stream-image,stream-latency; NOVACRON_DWCP_IDLE_FLUSH_MS=<ms> runs them with another idle flush
 * than sendStream's default). A filtered run writes bench/results/tmp/dwcp-partial-<date>.json and leaves the
 * committed results and docs alone, since it is not the full comparison.
 */
import { spawn } from 'node:child_process';
import { cp, mkdir, readdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { localChunkHashes } from '../../native/dwcp/chunk-hash';
import { writeSidecar } from '../../native/dwcp/chunk-index';
import { chunkingImplementation, chunkingKey, type ChunkingParams } from '../../native/dwcp/chunking';
import { dataExtentsImplementation } from '../../native/dwcp/data-extents';
import { DwcpWorkerPool } from '../../native/dwcp/worker-pool';
import { MODE_PARAMETERS, classifyMode, resolveTransferParameters } from '../../native/dwcp/mode';
import { readResults, writeResults, type Benchmark, type BenchRunInput, type BenchRunOutput } from '../results';
import { buildDwcpDataset, ensureBenchTools } from './dataset';
import { measure, sha256sum, STREAM_SCENARIOS, type DwcpBenchRun, type RunSpec, type Scenario } from './measure';
import { exec, LINKS, setupNamespaces, teardownNamespaces, waitListening, type Link } from './netns';
import {
  addRatios,
  compactJson,
  fmtBytes,
  renderDwcpGoals,
  renderDwcpSummary,
  renderDwcpTable,
  renderTable,
  type DwcpResults,
} from './report';
import { ensureStreamData, streamSpecs, type StreamData } from './stream-tools';
import { makePki, nodeArgv, PEER, peerConfig, toolSpecs, type LinkContext } from './tools';

const ITERATIONS = Math.max(1, Number(process.env.NOVACRON_BENCH_ITERATIONS ?? 3));

/** A comma-separated filter from the environment; undefined (no filter) when unset or empty. */
export function parseFilter(value: string | undefined): Set<string> | undefined {
  const names = (value ?? '')
    .split(',')
    .map((n) => n.trim())
    .filter((n) => n !== '');
  return names.length === 0 ? undefined : new Set(names);
}

const FILTERS = {
  links: parseFilter(process.env.NOVACRON_DWCP_LINKS),
  tools: parseFilter(process.env.NOVACRON_DWCP_TOOLS),
  scenarios: parseFilter(process.env.NOVACRON_DWCP_SCENARIOS),
};
/** Stream runs with another idle flush than sendStream's default, to choose that default on measurement. */
const IDLE_FLUSH_MS =
  (process.env.NOVACRON_DWCP_IDLE_FLUSH_MS ?? '') === '' ? undefined : Number(process.env.NOVACRON_DWCP_IDLE_FLUSH_MS);
const FILTERED = Object.values(FILTERS).some((f) => f !== undefined) || IDLE_FLUSH_MS !== undefined;

function selected(filter: Set<string> | undefined, name: string): boolean {
  return filter === undefined || filter.has(name);
}

const log = (line: string): void => {
  process.stdout.write(`[dwcp-bench] ${line}\n`);
};

async function runPeer(input: { ns: string; config: Record<string, unknown> }): Promise<unknown> {
  const { stdout } = await exec('ip', ['netns', 'exec', input.ns, ...nodeArgv(PEER, input.config)], {
    timeout: 120_000,
  });
  return JSON.parse(stdout.trim().split('\n').at(-1) ?? '{}');
}

/** The link's RTT and bandwidth as probeLink measures them, the sender's zstd calibration, and what `auto` picks. */
async function probeLink(ctx: LinkContext, port: number) {
  const { link } = ctx;
  log(`${link.name}: probing the link and calibrating zstd`);
  // The probe server lives until its stdin closes.
  const probeServer = spawn(
    'ip',
    ['netns', 'exec', link.receiverNs, ...nodeArgv(PEER, peerConfig(ctx, 'serve-probe', { port }))],
    { stdio: ['pipe', 'ignore', 'inherit'] },
  );
  const probeServerExited = new Promise((resolve) => probeServer.on('close', resolve));
  let probe: { rttMs: number; bandwidthMbps: number };
  try {
    await waitListening(link.receiverNs, port);
    probe = (await runPeer({ ns: link.senderNs, config: peerConfig(ctx, 'probe', { port }) })) as typeof probe;
  } finally {
    probeServer.stdin.end();
    await probeServerExited;
  }
  const calibration = (await runPeer({ ns: link.senderNs, config: peerConfig(ctx, 'calibrate', {}) })) as {
    mbps: number;
    ratio: number;
    hashMBps: number;
    workers: number;
  };
  const auto = resolveTransferParameters({
    rttMs: probe.rttMs,
    bandwidthMbps: probe.bandwidthMbps,
    cpuMBpsAtLevel1: calibration.mbps,
    ratioAtLevel1: calibration.ratio,
    hashMBps: calibration.hashMBps,
    workers: calibration.workers,
  });
  log(
    `${link.name}: rtt ${probe.rttMs.toFixed(2)} ms, ${probe.bandwidthMbps.toFixed(0)} Mbit/s → ${auto.mode}, level ${auto.compressionLevel}`,
  );
  return { ...probe, classified: classifyMode(probe), calibration, auto };
}

/** v1's chunk entries per chunking, computed once (untimed) for the delta-warm preparation. */
function v1EntriesCache(input: { v1Path: string; pool: DwcpWorkerPool }): (c: ChunkingParams) => Promise<Buffer> {
  const cache = new Map<string, Promise<Buffer>>();
  return (chunking) => {
    let entries = cache.get(chunkingKey(chunking));
    if (entries === undefined) {
      entries = input.pool.run({ kind: 'index', path: input.v1Path, chunking }).then((r) => r.entries);
      cache.set(chunkingKey(chunking), entries);
    }
    return entries.then((e) => Buffer.from(e));
  };
}

async function run(input: BenchRunInput): Promise<BenchRunOutput> {
  await ensureBenchTools();
  const work = path.join(input.outDir, 'tmp', 'dwcp');
  const dataset = await buildDwcpDataset({ dir: work, log });
  const scratch = path.join(work, 'run');
  await rm(scratch, { recursive: true, force: true });
  await mkdir(scratch, { recursive: true });
  const pki = await makePki(path.join(scratch, 'pki'));
  const v1Sha = await sha256sum(dataset.v1Path);
  const indexPool = new DwcpWorkerPool({ size: 1 });
  const v1Entries = v1EntriesCache({ v1Path: dataset.v1Path, pool: indexPool });
  const v2Sha = await sha256sum(dataset.v2Path);
  const include = (tool: string, scenario: Scenario): boolean =>
    selected(FILTERS.tools, tool) && selected(FILTERS.scenarios, scenario);
  const streamData: StreamData | undefined = STREAM_SCENARIOS.some((s) => selected(FILTERS.scenarios, s))
    ? await ensureStreamData({ dir: work })
    : undefined;
  const runs: DwcpBenchRun[] = [];
  const probes: Record<string, unknown> = {};
  let port = 24000;
  const nextPort = () => port++;
  const target = path.join(scratch, 'target.img');
  const prepare = async (spec: RunSpec): Promise<void> => {
    await rm(target, { force: true });
    if (spec.scenario === 'delta' || spec.scenario === 'delta-warm') await cp(dataset.v1Path, target);
    if (spec.warmChunking !== undefined) {
      const chunking = spec.warmChunking;
      await writeSidecar({ file: target, chunking, entries: await v1Entries(chunking) });
    }
  };

  await setupNamespaces();
  try {
    for (const link of LINKS.filter((l: Link) => selected(FILTERS.links, l.name))) {
      const ctx: LinkContext = { link, dataset, pki };
      const probe = await probeLink(ctx, nextPort());
      probes[link.name] = probe;
      const specs = [
        ...toolSpecs({ ctx, scratch, target, v1Sha, v2Sha, auto: probe.auto, include, nextPort }),
        ...(streamData
          ? streamSpecs({
              ctx,
              data: streamData,
              target,
              v1Sha,
              auto: probe.auto,
              include,
              nextPort,
              idleFlushMs: IDLE_FLUSH_MS,
            })
          : []),
      ];
      // Iterations go round the whole list, so a burst of load on the shared machine hits every tool alike.
      const samples = new Map<number, DwcpBenchRun[]>();
      for (let iteration = 1; iteration <= ITERATIONS; iteration++) {
        for (const [index, make] of specs.entries()) {
          const spec = await make();
          await prepare(spec);
          log(`${link.name}: ${spec.tool} ${spec.scenario} (${iteration}/${ITERATIONS})`);
          const result = await measure(spec, dataset.imageBytes, scratch);
          log(
            `  ${result.seconds.toFixed(1)} s, ${result.logicalMBps.toFixed(1)} MB/s, wire ${fmtBytes(result.wireBytes)} MB`,
          );
          samples.set(index, [...(samples.get(index) ?? []), result]);
        }
      }
      for (const list of samples.values()) {
        const sorted = [...list].sort((a, b) => a.seconds - b.seconds);
        const median = sorted[Math.floor(sorted.length / 2)];
        if (median !== undefined) runs.push({ ...median, secondsAll: list.map((r) => r.seconds) });
      }
    }
  } finally {
    await indexPool.close();
    await teardownNamespaces();
    await rm(target, { force: true });
  }

  addRatios(runs);
  const date = new Date().toISOString().slice(0, 10);
  const results = {
    benchmark: 'dwcp',
    date,
    iterations: ITERATIONS,
    dataset: { ...dataset, v1Path: path.basename(dataset.v1Path), v2Path: path.basename(dataset.v2Path) },
    links: LINKS.map((l) => ({ name: l.name, rateMbps: l.rateMbps ?? null })),
    /** dwcp-datacenter and dwcp-internet run with these rows; dwcp-auto with probes[link].auto. */
    modeParameters: { datacenter: MODE_PARAMETERS.datacenter, internet: MODE_PARAMETERS.internet },
    /** Which implementations the peers ran: dwcp-native's, or the TypeScript fallbacks (sha256 chunk hashes). */
    implementations: {
      chunking: chunkingImplementation,
      dataExtents: dataExtentsImplementation,
      chunkHashes: [...localChunkHashes],
    },
    probes,
    runs,
  };
  const format = (value: Record<string, unknown>) => compactJson(value as Parameters<typeof compactJson>[0]);
  if (FILTERED) {
    const filters = {
      ...Object.fromEntries(Object.entries(FILTERS).map(([k, v]) => [k, v === undefined ? null : [...v]])),
      idleFlushMs: IDLE_FLUSH_MS ?? null,
    };
    const file = await writeResults({
      dir: path.join(input.outDir, 'tmp'),
      name: `dwcp-partial-${date}.json`,
      recorder: input.recorder,
      results: { ...results, filters },
      format,
    });
    log(`\n${renderTable(runs)}`);
    return { file, publish: false };
  }
  const name = `dwcp-${date}.json`;
  const file = await writeResults({ dir: input.outDir, name, recorder: input.recorder, results, format });
  return { file, publish: true };
}

/** The newest full run: files are dated, and partial runs live under tmp/. */
async function newestResults(outDir: string): Promise<string> {
  const files = (await readdir(outDir)).filter((f) => /^dwcp-\d{4}-\d{2}-\d{2}\.json$/.test(f)).sort();
  const newest = files.at(-1);
  if (newest === undefined) throw new Error(`no dwcp-<date>.json in ${outDir}: run npm run bench -- dwcp`);
  return path.join(outDir, newest);
}

export const dwcpBenchmark: Benchmark = {
  name: 'dwcp',
  run,
  publishedResults: newestResults,
  sections: [
    {
      doc: 'docs/dwcp.md',
      name: 'dwcp',
      render: async (file) => renderDwcpTable(file, await readResults<DwcpResults>(file)),
    },
    {
      doc: 'docs/dwcp.md',
      name: 'dwcp-goals',
      render: async (file) => renderDwcpGoals(file, await readResults<DwcpResults>(file)),
    },
    {
      doc: 'docs/benchmarks.md',
      name: 'dwcp',
      render: async (file) => renderDwcpSummary(file, await readResults<DwcpResults>(file)),
    },
  ],
};
