/**
 * DWCP benchmark: a real Debian ext4 image (v1, and a v2 with ~5% of file bytes changed) copied between two network
 * namespaces by a raw TCP stream (nc), `zstd -1 -T0 | nc`, an rsync daemon (first copy and v1→v2 delta) and DWCP in
 * datacenter, internet and probe-chosen ("auto") parameters, over the namespace's loopback and over a veth pair
 * capped at 100 Mbit/s with `tc tbf`. Each run reports logical MB/s, bytes on the wire (interface counters, both
 * directions, headers included), CPU seconds of both ends (/usr/bin/time), and ratios to each baseline.
 *
 * Needs root (namespaces, tc, apt-get for missing tools). Writes bench/results/dwcp-<date>.json and the table in
 * docs/dwcp.md.
 *
 * Focused runs while iterating (bench/run.ts takes only benchmark names, so the filters are environment variables):
 * NOVACRON_DWCP_LINKS=loopback NOVACRON_DWCP_TOOLS=raw-tcp,rsync,dwcp-datacenter NOVACRON_DWCP_SCENARIOS=first
 * NOVACRON_BENCH_ITERATIONS=1 npm run bench -- dwcp. A filtered run writes bench/results/tmp/dwcp-partial-<date>.json
 * and leaves the committed results and docs alone, since it is not the full comparison.
 */
import { execFile, spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { cp, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import { createCertificateAuthority, issueHostCertificate } from '../../native/dwcp/certs';
import { writeSidecar } from '../../native/dwcp/chunk-index';
import { chunkingParams, type ChunkingParams } from '../../native/dwcp/chunking';
import { DwcpWorkerPool } from '../../native/dwcp/worker-pool';
import { DwcpMode, MODE_PARAMETERS, classifyMode, resolveTransferParameters } from '../../native/dwcp/mode';
import { buildDwcpDataset, ensureBenchTools, type DwcpDataset } from './dataset';

const exec = promisify(execFile);

const NS_A = 'novacron-dwcp-a';
const NS_B = 'novacron-dwcp-b';
const VETH_A = 'nvcdwcp-a';
const VETH_B = 'nvcdwcp-b';
/** A private /30 that exists only inside the two namespaces this benchmark creates. */
const ADDR_A = '10.213.7.1';
const ADDR_B = '10.213.7.2';
const CAP_MBPS = 100;
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
const FILTERED = Object.values(FILTERS).some((f) => f !== undefined);

function selected(filter: Set<string> | undefined, name: string): boolean {
  return filter === undefined || filter.has(name);
}

interface Link {
  name: string;
  senderNs: string;
  receiverNs: string;
  host: string;
  /** Interface whose tx+rx counters measure the traffic, in the sender's namespace. */
  counterIf: string;
  rateMbps: number | undefined;
}

const LINKS: Link[] = [
  { name: 'loopback', senderNs: NS_A, receiverNs: NS_A, host: '127.0.0.1', counterIf: 'lo', rateMbps: undefined },
  {
    name: `veth-tbf-${CAP_MBPS}mbit`,
    senderNs: NS_A,
    receiverNs: NS_B,
    host: ADDR_B,
    counterIf: VETH_A,
    rateMbps: CAP_MBPS,
  },
];

async function sh(command: string, args: string[]): Promise<string> {
  const { stdout } = await exec(command, args, { maxBuffer: 16 * 1024 * 1024, timeout: 30 * 60_000 });
  return stdout;
}

async function quiet(command: string, args: string[]): Promise<void> {
  await exec(command, args).catch(() => undefined);
}

async function teardownNamespaces(): Promise<void> {
  await quiet('ip', ['netns', 'del', NS_A]);
  await quiet('ip', ['netns', 'del', NS_B]);
}

async function setupNamespaces(): Promise<void> {
  await teardownNamespaces();
  await sh('ip', ['netns', 'add', NS_A]);
  await sh('ip', ['netns', 'add', NS_B]);
  await sh('ip', ['link', 'add', VETH_A, 'type', 'veth', 'peer', 'name', VETH_B]);
  await sh('ip', ['link', 'set', VETH_A, 'netns', NS_A]);
  await sh('ip', ['link', 'set', VETH_B, 'netns', NS_B]);
  for (const [ns, dev, addr] of [
    [NS_A, VETH_A, ADDR_A],
    [NS_B, VETH_B, ADDR_B],
  ] as const) {
    await sh('ip', ['-n', ns, 'addr', 'add', `${addr}/30`, 'dev', dev]);
    await sh('ip', ['-n', ns, 'link', 'set', dev, 'up']);
    await sh('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
    // Both directions capped, like a symmetric WAN link; the burst is ~4 ms of traffic at the cap.
    await sh('ip', [
      'netns',
      'exec',
      ns,
      'tc',
      'qdisc',
      'add',
      'dev',
      dev,
      'root',
      'tbf',
      'rate',
      `${CAP_MBPS}mbit`,
      'burst',
      '64kb',
      'latency',
      '50ms',
    ]);
  }
}

async function counters(link: Link): Promise<number> {
  const read = async (name: string): Promise<number> =>
    Number(
      (
        await sh('ip', ['netns', 'exec', link.senderNs, 'cat', `/sys/class/net/${link.counterIf}/statistics/${name}`])
      ).trim(),
    );
  // On lo every packet is counted once as tx and once as rx; on the veth, tx and rx are the two directions.
  if (link.counterIf === 'lo') return read('tx_bytes');
  return (await read('tx_bytes')) + (await read('rx_bytes'));
}

async function waitListening(ns: string, port: number): Promise<void> {
  for (let i = 0; i < 600; i++) {
    const out = await sh('ip', ['netns', 'exec', ns, 'ss', '-Hltn', `sport = :${port}`]);
    if (out.trim() !== '') return;
    await sleep(50);
  }
  throw new Error(`nothing listens on port ${port} in ${ns}`);
}

interface Timed {
  code: number | null;
  stdout: string;
  stderr: string;
  cpuSeconds: number;
  exitedAt: number;
}

interface Spawned {
  done: Promise<Timed>;
  /** Resolves with the first stdout line that starts with `prefix`. */
  waitFor: (prefix: string) => Promise<string>;
  write: (line: string) => void;
}

/** Runs a command in a namespace under /usr/bin/time, whose user + system seconds cover all of its threads. */
function timedProcess(input: { ns: string; argv: string[]; timeFile: string; stdin?: boolean }): Spawned {
  const child = spawn(
    'ip',
    ['netns', 'exec', input.ns, '/usr/bin/time', '-f', '%U %S', '-o', input.timeFile, ...input.argv],
    {
      stdio: ['pipe', 'pipe', 'pipe'],
    },
  );
  // Tools that do not take commands see end of input at once, as with </dev/null (nc would otherwise wait on it).
  if (input.stdin !== true) child.stdin.end();
  let stdout = '';
  let stderr = '';
  let waiters: { prefix: string; resolve: (line: string) => void }[] = [];
  child.stdout.on('data', (d: Buffer) => {
    stdout += d.toString();
    const lines = stdout.split('\n');
    waiters = waiters.filter((w) => {
      const line = lines.find((l) => l.startsWith(w.prefix));
      if (line !== undefined) w.resolve(line);
      return line === undefined;
    });
  });
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const done = new Promise<Timed>((resolve) => {
    child.on('close', (code) => {
      const exitedAt = performance.now();
      void readFile(input.timeFile, 'utf8')
        .then((text) => {
          const line = text.trim().split('\n').at(-1) ?? '0 0';
          const [user, sys] = line.split(' ').map(Number);
          return (user ?? 0) + (sys ?? 0);
        })
        .catch(() => Number.NaN)
        .then((cpuSeconds) => resolve({ code, stdout, stderr, cpuSeconds, exitedAt }));
    });
  });
  return {
    done,
    waitFor: (prefix) =>
      new Promise((resolve, reject) => {
        waiters.push({ prefix, resolve });
        void done.then((t) => reject(new Error(`exited (${t.code}) before printing ${prefix}: ${t.stderr}`)));
      }),
    write: (line) => {
      child.stdin.write(line);
    },
  };
}

/** A DWCP peer reports its own CPU seconds since it was warm, in its last stdout line. */
function reportedCpu(timed: Timed): number {
  const last = timed.stdout.trim().split('\n').at(-1) ?? '';
  try {
    const value: unknown = JSON.parse(last);
    if (typeof value === 'object' && value !== null && 'cpuSeconds' in value && typeof value.cpuSeconds === 'number') {
      return value.cpuSeconds;
    }
  } catch {
    // Not a DWCP peer: /usr/bin/time's figure stands.
  }
  return timed.cpuSeconds;
}

interface RunSpec {
  link: Link;
  tool: string;
  scenario: Scenario;
  port: number;
  receiver: string[];
  sender: string[];
  /** The receiver is a daemon that is stopped once the sender is done (rsync). */
  stopFile?: string;
  /**
   * DWCP endpoints live in long-running host agents: the sender starts and warms its worker pool before the clock
   * starts, and prints `ready`; both report CPU from that point.
   */
  warmSender?: boolean;
  target: string;
  expectedSha256: string;
  /** delta-warm: the receiver indexed v1 with this chunking before (its chunk-index sidecar is in place). */
  warmChunkAvgBytes?: number;
}

/**
 * first: v1 onto an empty target. delta: v2 onto a target holding v1, which DWCP's receiver has never seen (it
 * scans it). delta-warm (DWCP only): the same, on a host whose receiver indexed v1 before (as after receiving v1
 * through DWCP), so its chunk-index sidecar is current and only the sender scans.
 */
export type Scenario = 'first' | 'delta' | 'delta-warm';

export interface DwcpBenchRun {
  link: string;
  tool: string;
  scenario: Scenario;
  seconds: number;
  logicalMBps: number;
  wireBytes: number;
  senderCpuSeconds: number;
  receiverCpuSeconds: number;
  verified: boolean;
  /** 1-minute load average when the run started: the machine is shared, and this shows how much. */
  loadAvg1: number;
  /** Every iteration's time; the other figures are from the median one. */
  secondsAll?: number[];
  vs?: Record<string, { speedup: number; wireRatio: number }>;
}

async function sha256sum(file: string): Promise<string> {
  return (await sh('sha256sum', [file])).split(' ')[0] ?? '';
}

async function measure(spec: RunSpec, logicalBytes: number, scratch: string): Promise<DwcpBenchRun> {
  const receiverTime = path.join(scratch, 'receiver.time');
  const senderTime = path.join(scratch, 'sender.time');
  const loadAvg1 = os.loadavg()[0] ?? 0;
  const receiving = timedProcess({ ns: spec.link.receiverNs, argv: spec.receiver, timeFile: receiverTime });
  await waitListening(spec.link.receiverNs, spec.port);
  const sending = timedProcess({
    ns: spec.link.senderNs,
    argv: spec.sender,
    timeFile: senderTime,
    stdin: spec.warmSender === true,
  });
  if (spec.warmSender === true) await sending.waitFor('ready');
  const before = await counters(spec.link);
  const started = performance.now();
  if (spec.warmSender === true) sending.write('go\n');
  const sender = await sending.done;
  if (sender.code !== 0) throw new Error(`${spec.tool} sender failed (${sender.code}): ${sender.stderr}`);
  if (spec.stopFile !== undefined) await writeFile(spec.stopFile, '');
  const receiver = await receiving.done;
  if (receiver.code !== 0) throw new Error(`${spec.tool} receiver failed (${receiver.code}): ${receiver.stderr}`);
  const finished = spec.stopFile !== undefined ? sender.exitedAt : Math.max(sender.exitedAt, receiver.exitedAt);
  const wireBytes = (await counters(spec.link)) - before;
  const seconds = (finished - started) / 1000;
  const verified = (await sha256sum(spec.target)) === spec.expectedSha256;
  if (!verified) throw new Error(`${spec.tool} on ${spec.link.name} produced a different image`);
  return {
    link: spec.link.name,
    tool: spec.tool,
    scenario: spec.scenario,
    seconds,
    logicalMBps: logicalBytes / 1e6 / seconds,
    wireBytes,
    senderCpuSeconds: reportedCpu(sender),
    receiverCpuSeconds: reportedCpu(receiver),
    verified,
    loadAvg1,
  };
}

interface Pki {
  caPath: string;
  receiver: { certPath: string; keyPath: string };
  sender: { certPath: string; keyPath: string };
}

async function makePki(dir: string): Promise<Pki> {
  const caDir = path.join(dir, 'ca');
  const ca = await createCertificateAuthority({ dir: caDir });
  const receiver = await issueHostCertificate({
    caDir,
    hostId: 'bench-receiver',
    dir: path.join(dir, 'hosts'),
    ips: ['127.0.0.1', ADDR_B],
  });
  const sender = await issueHostCertificate({
    caDir,
    hostId: 'bench-sender',
    dir: path.join(dir, 'hosts'),
    ips: ['127.0.0.1', ADDR_A],
  });
  return { caPath: ca.certPath, receiver, sender };
}

function nodeArgv(script: string, config: unknown): string[] {
  return [process.execPath, '--import', pathToFileURL(require.resolve('tsx')).href, script, JSON.stringify(config)];
}

interface DwcpParams {
  streams: number;
  chunkAvgBytes: number;
  compressionLevel: number;
  maxInFlightChunks: number;
}

async function runPeer(input: { ns: string; config: Record<string, unknown> }): Promise<unknown> {
  const peer = path.join(__dirname, 'peer.ts');
  const { stdout } = await exec('ip', ['netns', 'exec', input.ns, ...nodeArgv(peer, input.config)], {
    timeout: 120_000,
  });
  return JSON.parse(stdout.trim().split('\n').at(-1) ?? '{}');
}

/** Results stay a few KB: figures rounded to 4 significant digits, one line per run. */
function compactJson(results: { runs: DwcpBenchRun[] } & Record<string, unknown>): string {
  const round = (_key: string, value: unknown): unknown =>
    typeof value === 'number' && !Number.isInteger(value) ? Number(value.toPrecision(4)) : value;
  const { runs, ...rest } = results;
  const head = JSON.stringify(rest, round, 1).replace(/\n}$/, '');
  const lines = runs.map((run) => `  ${JSON.stringify(run, round)}`);
  return `${head},\n "runs": [\n${lines.join(',\n')}\n ]\n}\n`;
}

function fmtBytes(n: number): string {
  return `${(n / 1e6).toFixed(1)}`;
}

function renderTable(runs: DwcpBenchRun[]): string {
  const lines = [
    '| link | tool | copy | s (median) | logical MB/s | wire MB | CPU s (send + recv) | × raw | × zstd | × rsync | wire / rsync | load |',
    '| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
  ];
  for (const r of runs) {
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
  return lines.join('\n');
}

/** Each run against each baseline on the same link; delta runs compare with rsync's delta, others with first copies. */
function addRatios(runs: DwcpBenchRun[]): void {
  for (const run of runs) {
    const vs: NonNullable<DwcpBenchRun['vs']> = {};
    for (const base of ['raw-tcp', 'zstd-1-nc', 'rsync'] as const) {
      const scenario = base === 'rsync' && run.scenario !== 'first' ? 'delta' : 'first';
      const baseline = runs.find((r) => r.link === run.link && r.tool === base && r.scenario === scenario);
      if (baseline === undefined || baseline === run) continue;
      vs[base] = {
        speedup: run.logicalMBps / baseline.logicalMBps,
        wireRatio: run.wireBytes / baseline.wireBytes,
      };
    }
    run.vs = vs;
  }
}

async function updateDoc(input: { table: string; dataset: DwcpDataset; meta: string }): Promise<void> {
  const doc = path.join(__dirname, '..', '..', 'docs', 'dwcp.md');
  const text = await readFile(doc, 'utf8');
  const start = '<!-- dwcp-bench:start -->';
  const end = '<!-- dwcp-bench:end -->';
  const from = text.indexOf(start);
  const to = text.indexOf(end);
  if (from < 0 || to < from) throw new Error(`${doc} has no ${start} … ${end} section`);
  const body = `${start}\n${input.meta}\n\nDataset: ${input.dataset.description}.\n\n${input.table}\n`;
  await writeFile(doc, text.slice(0, from) + body + text.slice(to));
}

/** v1's chunk entries per chunking, computed once (untimed) for the delta-warm preparation. */
function v1EntriesCache(input: { v1Path: string; pool: DwcpWorkerPool }): (c: ChunkingParams) => Promise<Buffer> {
  const cache = new Map<number, Promise<Buffer>>();
  return (chunking) => {
    let entries = cache.get(chunking.avgBytes);
    if (entries === undefined) {
      entries = input.pool.run({ kind: 'index', path: input.v1Path, chunking }).then((r) => r.entries);
      cache.set(chunking.avgBytes, entries);
    }
    return entries.then((e) => Buffer.from(e));
  };
}

export async function runDwcpBench(input: { outDir: string }): Promise<string> {
  const log = (line: string): void => {
    process.stdout.write(`[dwcp-bench] ${line}\n`);
  };
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
  const runs: DwcpBenchRun[] = [];
  const probes: Record<string, unknown> = {};
  let port = 24000;

  await setupNamespaces();
  try {
    for (const link of LINKS.filter((l) => selected(FILTERS.links, l.name))) {
      const peerConfig = (role: string, extra: Record<string, unknown>) => ({
        role,
        caPath: pki.caPath,
        certPath: role === 'receive' || role === 'serve-probe' ? pki.receiver.certPath : pki.sender.certPath,
        keyPath: role === 'receive' || role === 'serve-probe' ? pki.receiver.keyPath : pki.sender.keyPath,
        host: link.host,
        transferId: randomUUID(),
        streams: 1,
        chunkAvgBytes: 65536,
        compressionLevel: 1,
        maxInFlightChunks: 16,
        port: 0,
        path: dataset.v1Path,
        ...extra,
      });

      log(`${link.name}: probing the link and calibrating zstd`);
      const probePort = port++;
      // The probe server lives until its stdin closes.
      const probeServer = spawn(
        'ip',
        [
          'netns',
          'exec',
          link.receiverNs,
          ...nodeArgv(path.join(__dirname, 'peer.ts'), peerConfig('serve-probe', { port: probePort })),
        ],
        { stdio: ['pipe', 'ignore', 'inherit'] },
      );
      const probeServerExited = new Promise((resolve) => probeServer.on('close', resolve));
      let probe: { rttMs: number; bandwidthMbps: number };
      try {
        await waitListening(link.receiverNs, probePort);
        probe = (await runPeer({
          ns: link.senderNs,
          config: peerConfig('probe', { port: probePort }),
        })) as typeof probe;
      } finally {
        probeServer.stdin.end();
        await probeServerExited;
      }
      const calibration = (await runPeer({ ns: link.senderNs, config: peerConfig('calibrate', {}) })) as {
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
      probes[link.name] = { ...probe, classified: classifyMode(probe), calibration, auto };
      log(
        `${link.name}: rtt ${probe.rttMs.toFixed(2)} ms, ${probe.bandwidthMbps.toFixed(0)} Mbit/s → ${auto.mode}, level ${auto.compressionLevel}`,
      );

      const target = path.join(scratch, 'target.img');
      const prepare = async (spec: RunSpec): Promise<void> => {
        await rm(target, { force: true });
        if (spec.scenario !== 'first') await cp(dataset.v1Path, target);
        if (spec.warmChunkAvgBytes !== undefined) {
          const chunking = chunkingParams({ avgBytes: spec.warmChunkAvgBytes });
          await writeSidecar({ file: target, chunking, entries: await v1Entries(chunking) });
        }
      };
      const specs: (() => Promise<RunSpec>)[] = [];
      const add = (tool: string, scenario: Scenario, make: (p: number) => Promise<RunSpec> | RunSpec): void => {
        if (selected(FILTERS.tools, tool) && selected(FILTERS.scenarios, scenario))
          specs.push(async () => make(port++));
      };
      add('raw-tcp', 'first', (p) => ({
        link,
        tool: 'raw-tcp',
        scenario: 'first',
        port: p,
        receiver: ['bash', '-c', `exec nc -l ${link.host} ${p} > ${target}`],
        sender: ['bash', '-c', `exec nc -N ${link.host} ${p} < ${dataset.v1Path}`],
        target,
        expectedSha256: v1Sha,
      }));
      add('zstd-1-nc', 'first', (p) => ({
        link,
        tool: 'zstd-1-nc',
        scenario: 'first',
        port: p,
        receiver: ['bash', '-c', `nc -l ${link.host} ${p} | zstd -d -q -c > ${target}`],
        sender: ['bash', '-c', `zstd -1 -T0 -q -c ${dataset.v1Path} | nc -N ${link.host} ${p}`],
        target,
        expectedSha256: v1Sha,
      }));
      for (const scenario of ['first', 'delta'] as const) {
        add('rsync', scenario, async (p) => {
          const conf = path.join(scratch, 'rsyncd.conf');
          const stopFile = path.join(scratch, 'rsync.stop');
          await rm(stopFile, { force: true });
          await writeFile(
            conf,
            `[bench]\npath = ${scratch}\nread only = false\nuse chroot = false\nuid = root\ngid = root\n`,
          );
          return {
            link,
            tool: 'rsync',
            scenario,
            port: p,
            receiver: [
              'bash',
              '-c',
              `rsync --daemon --no-detach --config=${conf} --address=${link.host} --port=${p} & pid=$!; ` +
                `while [ ! -e ${stopFile} ]; do sleep 0.05; done; kill $pid; wait $pid; true`,
            ],
            sender: [
              'rsync',
              '-S',
              '-I',
              '--no-whole-file',
              scenario === 'first' ? dataset.v1Path : dataset.v2Path,
              `rsync://${link.host}:${p}/bench/target.img`,
            ],
            stopFile,
            target,
            expectedSha256: scenario === 'first' ? v1Sha : v2Sha,
          };
        });
      }
      const dwcpModes: [string, DwcpParams][] = [
        [DwcpMode.DATACENTER, MODE_PARAMETERS.datacenter],
        [DwcpMode.INTERNET, MODE_PARAMETERS.internet],
        ['auto', auto],
      ];
      for (const [name, params] of dwcpModes) {
        const scenarios: Scenario[] = name === 'auto' ? ['first', 'delta'] : ['first', 'delta', 'delta-warm'];
        for (const scenario of scenarios) {
          add(`dwcp-${name}`, scenario, (p) => {
            const transferId = randomUUID();
            const settings = {
              streams: params.streams,
              chunkAvgBytes: params.chunkAvgBytes,
              compressionLevel: params.compressionLevel,
              maxInFlightChunks: params.maxInFlightChunks,
            };
            return {
              link,
              tool: `dwcp-${name}`,
              scenario,
              port: p,
              receiver: nodeArgv(
                path.join(__dirname, 'peer.ts'),
                peerConfig('receive', { port: p, transferId, path: target }),
              ),
              sender: nodeArgv(
                path.join(__dirname, 'peer.ts'),
                peerConfig('send', {
                  port: p,
                  transferId,
                  path: scenario === 'first' ? dataset.v1Path : dataset.v2Path,
                  ...settings,
                }),
              ),
              target,
              expectedSha256: scenario === 'first' ? v1Sha : v2Sha,
              warmSender: true,
              ...(scenario === 'delta-warm' ? { warmChunkAvgBytes: params.chunkAvgBytes } : {}),
            };
          });
        }
      }
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
    await rm(path.join(scratch, 'target.img'), { force: true });
  }

  addRatios(runs);
  const date = new Date().toISOString().slice(0, 10);
  const cpuModel = os.cpus()[0]?.model ?? 'unknown';
  const results = {
    benchmark: 'dwcp',
    date,
    machine: { cpus: os.availableParallelism(), cpuModel, memoryGiB: Math.round(os.totalmem() / 2 ** 30) },
    dataset: { ...dataset, v1Path: path.basename(dataset.v1Path), v2Path: path.basename(dataset.v2Path) },
    links: LINKS.map((l) => ({ name: l.name, rateMbps: l.rateMbps ?? null })),
    /** dwcp-datacenter and dwcp-internet run with these rows; dwcp-auto with probes[link].auto. */
    modeParameters: { datacenter: MODE_PARAMETERS.datacenter, internet: MODE_PARAMETERS.internet },
    probes,
    runs,
  };
  if (FILTERED) {
    const file = path.join(input.outDir, 'tmp', `dwcp-partial-${date}.json`);
    await writeFile(
      file,
      compactJson({
        ...results,
        filters: Object.fromEntries(Object.entries(FILTERS).map(([k, v]) => [k, v === undefined ? null : [...v]])),
      }),
    );
    log(`\n${renderTable(runs)}`);
    return file;
  }
  await mkdir(input.outDir, { recursive: true });
  const file = path.join(input.outDir, `dwcp-${date}.json`);
  await writeFile(file, compactJson(results));
  await updateDoc({
    table: renderTable(runs),
    dataset,
    meta:
      `Measured ${date} on ${os.availableParallelism()} × ${cpuModel} by \`npm run bench -- dwcp\`, median of ` +
      `${ITERATIONS} interleaved iterations (results: \`bench/results/dwcp-${date}.json\`). "load" is the 1-minute ` +
      'load average when the median run started; the machine was shared with other work.',
  });
  return file;
}
