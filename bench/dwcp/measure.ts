/**
 * One timed copy: the receiver and the sender run in their namespaces under /usr/bin/time, and the copy is judged
 * by wall time, bytes on the wire (interface counters), both ends' CPU seconds and the target's sha256.
 */
import { spawn } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { counters, sh, waitListening, type Link } from './netns';
import type { ChunkingParams } from '../../native/dwcp/chunking';
import type { ChunkStats } from '../../native/dwcp/transfer-types';
import { loadAverage } from '../run-metadata';

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

/** What a Node peer (DWCP, or the stream baseline) reports in its last stdout line; nothing for other tools. */
/** What a DWCP sender reports of its transfer: the chunking key it used (hash included) and its chunk counts. */
export interface TransferReport {
  chunking: string;
  chunks: ChunkStats;
}

function peerReport(timed: Timed): { cpuSeconds?: number; latencyMs?: LatencySummary; transfer?: TransferReport } {
  const last = timed.stdout.trim().split('\n').at(-1) ?? '';
  try {
    const value: unknown = JSON.parse(last);
    if (typeof value !== 'object' || value === null) return {};
    return {
      ...('cpuSeconds' in value && typeof value.cpuSeconds === 'number' ? { cpuSeconds: value.cpuSeconds } : {}),
      ...('latencyMs' in value && typeof value.latencyMs === 'object' && value.latencyMs !== null
        ? { latencyMs: value.latencyMs as LatencySummary }
        : {}),
      ...('chunking' in value &&
      typeof value.chunking === 'string' &&
      'chunks' in value &&
      typeof value.chunks === 'object'
        ? { transfer: { chunking: value.chunking, chunks: value.chunks as ChunkStats } }
        : {}),
    };
  } catch {
    // Not a Node peer: /usr/bin/time's figure stands.
    return {};
  }
}

export interface RunSpec {
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
  /** Absent for stream-latency, whose receiver checks the order of what it timed instead. */
  expectedSha256?: string;
  /** The content's size when it is not the image's (stream runs). */
  logicalBytes?: number;
  /** delta-warm: the receiver indexed v1 with this chunking before (its chunk-index sidecar is in place). */
  warmChunking?: ChunkingParams;
}

/**
 * first: v1 onto an empty target. delta: v2 onto a target holding v1, which DWCP's receiver has never seen (it
 * scans it). delta-warm (DWCP only): the same, on a host whose receiver indexed v1 before (as after receiving v1
 * through DWCP), so its chunk-index sidecar is current and only the sender scans. The stream scenarios are
 * described in bench/dwcp/stream-tools.ts.
 */
export type Scenario = 'first' | 'delta' | 'delta-warm' | StreamScenario;

/** Stream runs (bench/dwcp/stream-tools.ts): a live migration's ordered byte stream. */
export const STREAM_SCENARIOS = ['stream-random', 'stream-random-4ch', 'stream-image', 'stream-latency'] as const;
export type StreamScenario = (typeof STREAM_SCENARIOS)[number];

export function isStreamScenario(scenario: Scenario): scenario is StreamScenario {
  return scenario.startsWith('stream-');
}

/** The run of `tool` on `link` for `scenario`, if the results hold one. */
export function findRun(input: {
  runs: readonly DwcpBenchRun[];
  link: string;
  tool: string;
  scenario: string;
}): DwcpBenchRun | undefined {
  return input.runs.find((r) => r.link === input.link && r.tool === input.tool && r.scenario === input.scenario);
}

/** Milliseconds from a write into the source to its arrival at the sink (stream-latency). */
export interface LatencySummary {
  p50: number;
  p99: number;
  max: number;
  writes: number;
}

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
  /** stream-latency only; its other figures describe the paced run, not a throughput. */
  latencyMs?: LatencySummary;
  /** DWCP file copies: the chunking the peers agreed on and the sender's chunk counts (zero, copied, sent). */
  transfer?: TransferReport;
  /** Every iteration's time; the other figures are from the median one. */
  secondsAll?: number[];
  vs?: Record<string, { speedup: number; wireRatio: number }>;
}

export async function sha256sum(file: string): Promise<string> {
  return (await sh('sha256sum', [file])).split(' ')[0] ?? '';
}

export async function measure(spec: RunSpec, imageBytes: number, scratch: string): Promise<DwcpBenchRun> {
  const logicalBytes = spec.logicalBytes ?? imageBytes;
  const receiverTime = path.join(scratch, 'receiver.time');
  const senderTime = path.join(scratch, 'sender.time');
  const [loadAvg1] = loadAverage();
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
  if (sender.code !== 0) {
    // A sender that gave up on its connections usually follows a receiver that failed first: say what it printed.
    const receiverDone = await Promise.race([receiving.done, sleep(5000).then(() => undefined)]);
    const receiverErr = receiverDone === undefined ? '(still running)' : receiverDone.stderr.trim();
    throw new Error(
      `${spec.tool} sender failed (${sender.code}): ${sender.stderr}` +
        (receiverErr === '' ? '' : `\nreceiver stderr: ${receiverErr}`),
    );
  }
  if (spec.stopFile !== undefined) await writeFile(spec.stopFile, '');
  const receiver = await receiving.done;
  if (receiver.code !== 0) throw new Error(`${spec.tool} receiver failed (${receiver.code}): ${receiver.stderr}`);
  const finished = spec.stopFile !== undefined ? sender.exitedAt : Math.max(sender.exitedAt, receiver.exitedAt);
  const wireBytes = (await counters(spec.link)) - before;
  const seconds = (finished - started) / 1000;
  const verified = spec.expectedSha256 === undefined || (await sha256sum(spec.target)) === spec.expectedSha256;
  if (!verified) throw new Error(`${spec.tool} on ${spec.link.name} produced a different image`);
  const senderReport = peerReport(sender);
  const receiverReport = peerReport(receiver);
  return {
    link: spec.link.name,
    tool: spec.tool,
    scenario: spec.scenario,
    seconds,
    logicalMBps: logicalBytes / 1e6 / seconds,
    wireBytes,
    senderCpuSeconds: senderReport.cpuSeconds ?? sender.cpuSeconds,
    receiverCpuSeconds: receiverReport.cpuSeconds ?? receiver.cpuSeconds,
    verified,
    loadAvg1,
    ...(receiverReport.latencyMs !== undefined ? { latencyMs: receiverReport.latencyMs } : {}),
    ...(senderReport.transfer !== undefined ? { transfer: senderReport.transfer } : {}),
  };
}
