/**
 * One end of a benchmark stream run (bench/dwcp/stream-tools.ts), as its own process like bench/dwcp/peer.ts:
 * either DWCP stream transfers (sendStreamChannels / expectStream, one per channel) or the direct baseline, plain
 * Node `net` sockets, one per channel. argv[2] is a JSON config; the last stdout line is a JSON result.
 *
 * Bulk runs carry bytes [0, bytes) of a data file, channel i its i-th equal part, and the receiver writes each part
 * at its offset in the target, so the target's sha256 is the data's. Latency runs write `writeBytes` (one guest
 * page) every `intervalMs`, stamped with the monotonic clock, which both processes share; the receiver reports the
 * time from each write to its arrival at the sink.
 */
import { randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { open } from 'node:fs/promises';
import net from 'node:net';
import { PassThrough, Writable, type Readable } from 'node:stream';
import { finished } from 'node:stream/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { z } from 'zod';
import { DwcpReceiver } from '../../native/dwcp/receiver';
import { sendStreamChannels } from '../../native/dwcp/send-stream';
import type { DwcpWorkerPool } from '../../native/dwcp/worker-pool';
import { cpuSecondsSince, printResult, readPeerTls, runPeer, warmPool } from './peer-process';

const ConfigSchema = z.object({
  role: z.enum(['receive', 'send']),
  caPath: z.string(),
  certPath: z.string(),
  keyPath: z.string(),
  host: z.string(),
  port: z.number().int(),
  /** One per channel (DWCP); their count is the channel count for both transports. */
  transferIds: z.array(z.string()).min(1),
  pattern: z.discriminatedUnion('kind', [
    z.object({ kind: z.literal('bulk'), dataPath: z.string(), bytes: z.number().int().positive(), target: z.string() }),
    z.object({
      kind: z.literal('latency'),
      writes: z.number().int().positive(),
      intervalMs: z.number().positive(),
      writeBytes: z.number().int().min(16),
    }),
  ]),
  /** DWCP stream parameters; without them the run is the direct baseline over plain `net` sockets. */
  dwcp: z
    .object({
      streams: z.number().int().positive(),
      chunkBytes: z.number().int().positive(),
      compressionLevel: z.number().int().nonnegative(),
      maxInFlightChunks: z.number().int().positive(),
      wholeStreamSha256: z.boolean(),
      idleFlushMs: z.number().nonnegative().optional(),
    })
    .optional(),
});
type Config = z.infer<typeof ConfigSchema>;
type Bulk = Extract<Config['pattern'], { kind: 'bulk' }>;
type Latency = Extract<Config['pattern'], { kind: 'latency' }>;

/** Sink and source buffers large enough that neither end waits on the file system every chunk. */
const IO_BUFFER_BYTES = 4 * 1024 * 1024;

function channelRange(pattern: Bulk, channel: number, channels: number): { start: number; length: number } {
  const part = Math.ceil(pattern.bytes / channels);
  const start = Math.min(pattern.bytes, channel * part);
  return { start, length: Math.min(part, pattern.bytes - start) };
}

/** Reads latency records (monotonic send time in ns, sequence number) from a byte stream and times each one. */
class LatencyMeter {
  private pending: Buffer = Buffer.alloc(0);
  private next = 0;
  readonly samplesMs: number[] = [];
  constructor(private readonly writeBytes: number) {}

  push(data: Buffer): void {
    const now = process.hrtime.bigint();
    this.pending = this.pending.length === 0 ? data : Buffer.concat([this.pending, data]);
    while (this.pending.length >= this.writeBytes) {
      const sentAt = this.pending.readBigUInt64BE(0);
      const seq = this.pending.readUInt32BE(8);
      if (seq !== this.next) throw new Error(`latency record ${seq} arrived where ${this.next} was due`);
      this.next++;
      // Record 0 only gets the transport going (see latencySource).
      if (seq > 0) this.samplesMs.push(Number(now - sentAt) / 1e6);
      this.pending = this.pending.subarray(this.writeBytes);
    }
  }

  summary(): { p50: number; p99: number; max: number; writes: number } {
    const sorted = [...this.samplesMs].sort((a, b) => a - b);
    const at = (q: number): number => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? NaN;
    return { p50: at(0.5), p99: at(0.99), max: sorted.at(-1) ?? NaN, writes: sorted.length };
  }
}

/** The sinks of a receive: each channel's part of the target file, or the latency meter. */
async function receiveSinks(config: Config): Promise<{ sinks: Writable[]; meter: LatencyMeter | undefined }> {
  const channels = config.transferIds.length;
  const { pattern } = config;
  if (pattern.kind === 'latency') {
    const meter = new LatencyMeter(pattern.writeBytes);
    const sink = new Writable({
      write(chunk: Buffer, _enc, done) {
        try {
          meter.push(chunk);
          done();
        } catch (err) {
          done(err as Error);
        }
      },
    });
    return { sinks: [sink], meter };
  }
  await (await open(pattern.target, 'w')).close();
  const sinks = config.transferIds.map((_, i) =>
    createWriteStream(pattern.target, {
      flags: 'r+',
      start: channelRange(pattern, i, channels).start,
      highWaterMark: IO_BUFFER_BYTES,
    }),
  );
  return { sinks, meter: undefined };
}

/**
 * Each channel's source: its part of the data file, or the paced latency records, which start once `connected`
 * says the transport is up (a first, untimed record gets it going), so connection setup is not timed.
 */
function sendSources(config: Config, connected: Promise<void>): Readable[] {
  const { pattern } = config;
  const channels = config.transferIds.length;
  if (pattern.kind === 'latency') return [latencySource(pattern, connected)];
  return config.transferIds.map((_, i) => {
    const { start, length } = channelRange(pattern, i, channels);
    return createReadStream(pattern.dataPath, { start, end: start + length - 1, highWaterMark: IO_BUFFER_BYTES });
  });
}

function latencySource(pattern: Latency, connected: Promise<void>): Readable {
  const out = new PassThrough();
  const filler = randomBytes(pattern.writeBytes);
  const write = (seq: number): void => {
    const record = Buffer.from(filler);
    record.writeBigUInt64BE(process.hrtime.bigint(), 0);
    record.writeUInt32BE(seq, 8);
    out.write(record);
  };
  void (async () => {
    write(0);
    await connected;
    for (let seq = 1; seq <= pattern.writes; seq++) {
      await sleep(pattern.intervalMs);
      write(seq);
    }
    out.end();
  })();
  return out;
}

async function receiveDwcp(config: Config, dwcp: NonNullable<Config['dwcp']>, pool: DwcpWorkerPool): Promise<unknown> {
  const tls = await readPeerTls(config);
  const receiver = await DwcpReceiver.start({ tls, host: config.host, port: config.port, pool });
  const { sinks, meter } = await receiveSinks(config);
  const results = config.transferIds.map((transferId, i) =>
    receiver.expectStream({ transferId, sink: sinks[i]!, wholeStreamSha256: dwcp.wholeStreamSha256 }),
  );
  const cpu = process.cpuUsage();
  process.stdout.write(`listening ${receiver.port}\n`);
  const received = await Promise.all(results);
  const cpuSeconds = cpuSecondsSince(cpu);
  await receiver.close();
  return { channels: received, cpuSeconds, ...(meter ? { latencyMs: meter.summary() } : {}) };
}

/** The baseline's receiver: one connection per channel, whose first byte names its channel. */
async function receiveTcp(config: Config): Promise<unknown> {
  const channels = config.transferIds.length;
  const { sinks, meter } = await receiveSinks(config);
  const done: Promise<void>[] = [];
  const server = net.createServer((socket) => {
    socket.setNoDelay(true);
    socket.once('readable', () => {
      const head = socket.read(1) as Buffer | null;
      const sink = sinks[head?.[0] ?? channels];
      if (sink === undefined) {
        socket.destroy();
        return;
      }
      socket.pipe(sink);
      done.push(finished(sink));
      if (done.length === channels) allConnected();
    });
  });
  let allConnected: () => void = () => undefined;
  const connected = new Promise<void>((resolve) => (allConnected = resolve));
  await new Promise<void>((resolve) => server.listen(config.port, config.host, resolve));
  const cpu = process.cpuUsage();
  process.stdout.write(`listening ${config.port}\n`);
  await connected;
  await Promise.all(done);
  const cpuSeconds = cpuSecondsSince(cpu);
  server.close();
  return { cpuSeconds, ...(meter ? { latencyMs: meter.summary() } : {}) };
}

async function sendDwcp(config: Config, dwcp: NonNullable<Config['dwcp']>, pool: DwcpWorkerPool): Promise<unknown> {
  const tls = await readPeerTls(config);
  let delivered: () => void = () => undefined;
  const sources = sendSources(config, new Promise((resolve) => (delivered = resolve)));
  return sendStreamChannels({
    host: config.host,
    port: config.port,
    tls,
    pool,
    channels: config.transferIds.map((transferId, i) => ({ transferId, source: sources[i]! })),
    ...dwcp,
    // The first report follows the first acknowledgement: connections are up and a chunk went through.
    onProgress: () => delivered(),
  });
}

async function sendTcp(config: Config): Promise<void> {
  let connected: () => void = () => undefined;
  const sources = sendSources(config, new Promise((resolve) => (connected = resolve)));
  await Promise.all(
    sources.map(async (source, i) => {
      const socket = net.connect({ host: config.host, port: config.port });
      socket.setNoDelay(true);
      await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
      connected();
      socket.write(Buffer.from([i]));
      source.pipe(socket);
      // Done when the receiver closes its side, having taken everything, as sendStream is done at the END reply.
      socket.resume();
      await finished(socket);
    }),
  );
}

async function main(): Promise<void> {
  const config = ConfigSchema.parse(JSON.parse(process.argv[2] ?? '{}'));
  const { dwcp } = config;
  const pool = dwcp !== undefined ? await warmPool() : undefined;
  try {
    if (config.role === 'receive') {
      printResult(dwcp !== undefined && pool ? await receiveDwcp(config, dwcp, pool) : await receiveTcp(config));
      return;
    }
    process.stdout.write('ready\n');
    await new Promise((resolve) => process.stdin.once('data', resolve));
    const cpu = process.cpuUsage();
    const result = dwcp !== undefined && pool ? await sendDwcp(config, dwcp, pool) : await sendTcp(config);
    printResult({ result, cpuSeconds: cpuSecondsSince(cpu) });
  } finally {
    await pool?.close();
  }
}

runPeer(main);
