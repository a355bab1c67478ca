/**
 * Host-side image activities, on the `host-<hostId>` queue: inspect an image in the host's library, probe the link
 * to a peer, and move an image between hosts with DWCP. The receiving host registers the transfer and waits for
 * it (`receiveImage`) while the sending host runs it (`transferImage`); both heartbeat their progress and both stop
 * when the workflow is cancelled.
 */
import {
  ApplicationFailure,
  CancelledFailure,
  cancellationSignal,
  Context,
  heartbeat,
  log,
} from '@temporalio/activity';
import { mkdir, readdir, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import type { NovacronConfig } from '../config/schema';
import {
  chunkingParams,
  fixedChunking,
  classifyMode,
  dialTls,
  DwcpError,
  isSidecarPath,
  hashFileInPool,
  measureCompression,
  probeLink,
  resolveTransferParameters,
  sampleFileData,
  sendFile,
  type DwcpMode,
  type DwcpReceiver,
  type DwcpWorkerPool,
  type TlsMaterial,
  type TransferParameters,
  type TransferProgress,
} from '../native/dwcp';
import type { DiskImages } from '../native/libvirt';
import { imageFileName, type ImageFormat } from '../domain/image';
import type { LinkProbeSample } from '../store/link-probes';

export interface ImageActivityDeps {
  hostId: string;
  imageRoot: string;
  config: NovacronConfig;
  images: DiskImages;
  receiver: DwcpReceiver;
  tls: TlsMaterial;
  pool: DwcpWorkerPool;
  /**
   * A host's current DWCP endpoint. A restarted agent may listen on another port (dwcpPort 0), so the sender
   * looks it up on every connect instead of trusting the one planned at the start.
   */
  lookupDwcpEndpoint?: (hostId: string) => Promise<string | undefined>;
}

export interface ImageRef {
  imageId: string;
  format: ImageFormat;
}

export interface InspectedImage {
  path: string;
  sizeBytes: number;
  sha256: string;
}

export interface LinkProbeInput {
  targetHostId: string;
  /** host:port of the target's DWCP receiver. */
  endpoint: string;
  durationMs?: number;
}

/** One probe, as stored in link_probes once the workflow records it. */
export type LinkProbeReport = Omit<LinkProbeSample, 'workflowId'>;

export interface ReceiveImageInput extends ImageRef {
  transferId: string;
  sha256: string;
  sourceHostId: string;
}

export interface ReceiveImageResult {
  path: string;
  /** The target already held the verified image: nothing crossed the wire. */
  alreadyPresent: boolean;
  wireBytes: number;
  durationMs: number;
}

export interface TransferImageInput extends ImageRef {
  transferId: string;
  sha256: string;
  targetHostId: string;
  endpoint: string;
  probe: Pick<LinkProbeReport, 'rttMs' | 'bandwidthMbps'>;
}

/** What the transfer heartbeats carry; GET /v1/workflows/:id shows the newest one. */
export interface TransferHeartbeat {
  phase: 'calibrating' | 'sending' | 'receiving' | 'waiting-for-sender';
  logicalBytes: number;
  totalBytes: number;
  wireBytes: number;
  chunksDone: number;
  chunksTotal?: number;
}

export interface TransferImageResult {
  mode: DwcpMode;
  parameters: TransferParameters;
  logicalBytes: number;
  wireBytes: number;
  durationMs: number;
  attempts: number;
  chunks: { total: number; data: number; refs: number; zero: number; resumed: number; resent: number };
}

const HEARTBEAT_MS = 2000;
const PARTIAL_SUFFIXES = ['.dwcp-partial', '.dwcp-journal'];

/**
 * DWCP decides what is worth retrying; Temporal gets the same answer under a stable failure type. Once this
 * activity was cancelled, whatever the transfer failed with is reported as that cancellation.
 */
function toActivityFailure(err: unknown): never {
  const signal = cancellationSignal();
  if (signal.aborted) throw signal.reason instanceof Error ? signal.reason : new CancelledFailure('cancelled');
  if (err instanceof DwcpError) {
    // A peer that cancelled or closed (an agent shutting down) may be back on the next attempt: DwcpCancelledError
    // is retryable, like every DWCP error that a later attempt can resume.
    const type = `Dwcp${err.code.charAt(0)}${err.code
      .slice(1)
      .toLowerCase()
      .replace(/_(\w)/g, (_, c: string) => c.toUpperCase())}`;
    if (err.retryable) throw ApplicationFailure.retryable(err.message, type);
    throw ApplicationFailure.nonRetryable(err.message, type);
  }
  throw err;
}

/**
 * Heartbeats every progress update (the SDK throttles what reaches the server) and repeats the newest every
 * HEARTBEAT_MS, so a quiet phase (a peer still hashing) is not mistaken for a dead agent.
 */
function heartbeatTicker<T extends object>(initial: T) {
  // Progress callbacks run on the receiver's sockets, outside this activity's async context: hold the context.
  const context = Context.current();
  let latest = initial;
  context.heartbeat(latest);
  const timer = setInterval(() => context.heartbeat(latest), HEARTBEAT_MS);
  return {
    update(next: Partial<T>) {
      latest = { ...latest, ...next };
      context.heartbeat(latest);
    },
    stop: () => clearInterval(timer),
  };
}

export function createImageActivities(deps: ImageActivityDeps) {
  const { hostId, imageRoot } = deps;
  const libraryPath = (ref: ImageRef) => path.join(imageRoot, imageFileName(ref));
  const modeOverride = deps.config.dwcp.mode === 'auto' ? undefined : deps.config.dwcp.mode;
  const { rateLimitMbps } = deps.config.dwcp.transport;
  // How a probed link picks its mode: the configured thresholds, and the configured mode when it is not auto.
  const modeOptions = { thresholds: deps.config.network, ...(modeOverride ? { override: modeOverride } : {}) };

  /** What the whole file hashes to, off this process's event loop, with heartbeats while the worker reads. */
  const hashFile = async (file: string, details: object): Promise<string> => {
    const ticker = heartbeatTicker(details);
    try {
      return await hashFileInPool({ pool: deps.pool, path: file });
    } finally {
      ticker.stop();
    }
  };

  const transferParameters = async (input: TransferImageInput, sourcePath: string): Promise<TransferParameters> => {
    const { compression } = deps.config.dwcp;
    const base = { ...input.probe, ...modeOptions };
    if (compression.algorithm === 'none') return { ...resolveTransferParameters(base), compressionLevel: 0 };
    if (compression.level !== 'auto')
      return { ...resolveTransferParameters(base), compressionLevel: compression.level };
    // zstd and hashing speed on this host's CPU for this image's own data, as the level rule needs them.
    const sample = await sampleFileData(sourcePath);
    if (!sample) return resolveTransferParameters(base);
    const measured = await measureCompression({ pool: deps.pool, sample });
    return resolveTransferParameters({
      ...base,
      cpuMBpsAtLevel1: measured.mbps,
      ratioAtLevel1: measured.ratio,
      hashMBps: measured.hashMBps,
      workers: deps.pool.size,
    });
  };

  return {
    /** Size and sha256 of an image a user placed in this host's library; the format must be what qemu-img sees. */
    async inspectImage(input: ImageRef): Promise<InspectedImage> {
      const imagePath = libraryPath(input);
      const info = await deps.images.info({ path: imagePath });
      if (!info) {
        throw ApplicationFailure.nonRetryable(
          `no image file at ${imagePath} on host ${hostId} (put it there first)`,
          'ImageFileMissing',
        );
      }
      if (info.format !== input.format) {
        throw ApplicationFailure.nonRetryable(
          `${imagePath} is ${info.format}, not ${input.format}`,
          'ImageFormatMismatch',
        );
      }
      const { size } = await stat(imagePath);
      const sha256 = await hashFile(imagePath, { phase: 'hashing', totalBytes: size });
      return { path: imagePath, sizeBytes: size, sha256 };
    },

    async probeLink(input: LinkProbeInput): Promise<LinkProbeReport> {
      const { host, port } = parseEndpoint(input.endpoint);
      heartbeat({ phase: 'probing' });
      const streams = 2;
      const result = await probeLink({
        host,
        port,
        tls: deps.tls,
        streams,
        durationMs: input.durationMs ?? 1000,
        signal: cancellationSignal(),
      }).catch(toActivityFailure);
      return {
        sourceHostId: hostId,
        targetHostId: input.targetHostId,
        rttMs: result.rttMs,
        bandwidthMbps: result.bandwidthMbps,
        probeBytes: result.bytes,
        streams,
        mode: classifyMode({ ...result, ...modeOptions }),
      };
    },

    /**
     * The receiving side: registers the transfer with this host's DWCP receiver and waits for the verified file.
     * Other images in the library are offered as bases, so content the host already has never crosses the wire.
     * A retry after an agent restart registers the same transfer id and resumes from the journal; a cancel
     * stops the sender and removes the partial file.
     */
    async receiveImage(input: ReceiveImageInput): Promise<ReceiveImageResult> {
      const targetPath = libraryPath(input);
      const started = Date.now();
      const existing = await stat(targetPath).catch(() => undefined);
      if (existing?.isFile() && (await hashFile(targetPath, { phase: 'verifying' })) === input.sha256) {
        return { path: targetPath, alreadyPresent: true, wireBytes: 0, durationMs: Date.now() - started };
      }
      const libraryDir = path.dirname(targetPath);
      const baseImages = (await readdir(libraryDir).catch(() => [] as string[]))
        .filter((name) => !PARTIAL_SUFFIXES.some((suffix) => name.endsWith(suffix)) && !isSidecarPath(name))
        .map((name) => path.join(libraryDir, name))
        .filter((candidate) => candidate !== targetPath);
      const ticker = heartbeatTicker({
        phase: 'waiting-for-sender',
        logicalBytes: 0,
        totalBytes: 0,
        wireBytes: 0,
        chunksDone: 0,
      });
      const signal = cancellationSignal();
      const onCancel = () => deps.receiver.cancel(input.transferId, 'image replication cancelled');
      signal.addEventListener('abort', onCancel, { once: true });
      try {
        await mkdir(libraryDir, { recursive: true });
        // A cancel that came before the transfer was registered found nothing to stop, and the listener never
        // fires again: honour it here. expectFile registers synchronously, so no cancel can slip in between.
        signal.throwIfAborted();
        const result = await deps.receiver.expectFile({
          transferId: input.transferId,
          targetPath,
          baseImages,
          peerHostId: input.sourceHostId,
          onProgress: (p: TransferProgress) =>
            ticker.update({
              phase: 'receiving',
              logicalBytes: p.logicalBytes,
              wireBytes: p.wireBytes,
              chunksDone: p.chunksDone,
              ...(p.chunksTotal !== undefined ? { chunksTotal: p.chunksTotal } : {}),
            }),
        });
        if (result.sha256 !== input.sha256) {
          await rm(targetPath, { force: true });
          throw ApplicationFailure.nonRetryable(
            `received content has sha256 ${result.sha256}, the image is ${input.sha256}: the source file changed`,
            'ImageContentMismatch',
          );
        }
        log.info('image received', {
          hostId,
          imageId: input.imageId,
          sourceHostId: input.sourceHostId,
          transferId: input.transferId,
          logicalBytes: result.logicalBytes,
          wireBytes: result.wireBytes,
          chunks: result.chunks,
        });
        return {
          path: targetPath,
          alreadyPresent: false,
          wireBytes: result.wireBytes,
          durationMs: Date.now() - started,
        };
      } catch (err) {
        if (signal.aborted) {
          await Promise.all(PARTIAL_SUFFIXES.map((suffix) => rm(`${targetPath}${suffix}`, { force: true })));
        }
        return toActivityFailure(err);
      } finally {
        signal.removeEventListener('abort', onCancel);
        ticker.stop();
      }
    },

    /** Removes what an unfinished receive left in the library; the finished image itself is never touched. */
    async discardPartialImage(input: ImageRef): Promise<{ removed: number }> {
      const targetPath = libraryPath(input);
      let removed = 0;
      for (const suffix of PARTIAL_SUFFIXES) {
        if (await stat(`${targetPath}${suffix}`).catch(() => undefined)) {
          await rm(`${targetPath}${suffix}`, { force: true });
          removed++;
        }
      }
      return { removed };
    },

    /** The sending side: streams the library file to the target's receiver with the link's mode parameters. */
    async transferImage(input: TransferImageInput): Promise<TransferImageResult> {
      const sourcePath = libraryPath(input);
      const { size } = await stat(sourcePath).catch(() => {
        throw ApplicationFailure.nonRetryable(`no image file at ${sourcePath} on host ${hostId}`, 'ImageFileMissing');
      });
      const ticker = heartbeatTicker({
        phase: 'calibrating',
        logicalBytes: 0,
        totalBytes: size,
        wireBytes: 0,
        chunksDone: 0,
      });
      try {
        const parameters = await transferParameters(input, sourcePath);
        ticker.update({ phase: 'sending' });
        const { host, port } = parseEndpoint(input.endpoint);
        const result = await sendFile({
          host,
          port,
          tls: deps.tls,
          transferId: input.transferId,
          sourcePath,
          streams: parameters.streams,
          compressionLevel: parameters.compressionLevel,
          maxInFlightChunks: parameters.maxInFlightChunks,
          ...(rateLimitMbps !== undefined ? { maxBytesPerSecond: (rateLimitMbps * 1e6) / 8 } : {}),
          chunking: chunkingParams({ avgBytes: parameters.chunkAvgBytes }),
          ...(parameters.firstCopyChunkBytes
            ? { firstCopyChunking: fixedChunking({ bytes: parameters.firstCopyChunkBytes }) }
            : {}),
          pool: deps.pool,
          dial: async (dial) => {
            const current = await deps.lookupDwcpEndpoint?.(input.targetHostId).catch(() => undefined);
            return dialTls({ ...dial, ...(current ? parseEndpoint(current) : {}) });
          },
          signal: cancellationSignal(),
          onProgress: (p) =>
            ticker.update({
              logicalBytes: p.logicalBytes,
              wireBytes: p.wireBytes,
              chunksDone: p.chunksDone,
              ...(p.chunksTotal !== undefined ? { chunksTotal: p.chunksTotal } : {}),
            }),
        }).catch(toActivityFailure);
        if (result.sha256 !== input.sha256) {
          throw ApplicationFailure.nonRetryable(
            `${sourcePath} now has sha256 ${result.sha256}, the image is ${input.sha256}`,
            'ImageContentMismatch',
          );
        }
        log.info('image sent', {
          hostId,
          imageId: input.imageId,
          targetHostId: input.targetHostId,
          transferId: input.transferId,
          mode: parameters.mode,
          streams: parameters.streams,
          compressionLevel: parameters.compressionLevel,
          chunking: result.chunking,
          logicalBytes: result.logicalBytes,
          wireBytes: result.wireBytes,
          durationMs: result.durationMs,
          attempts: result.attempts,
        });
        return {
          mode: parameters.mode,
          parameters,
          logicalBytes: result.logicalBytes,
          wireBytes: result.wireBytes,
          durationMs: result.durationMs,
          attempts: result.attempts,
          chunks: result.chunks,
        };
      } finally {
        ticker.stop();
      }
    },
  };
}

export type ImageActivities = ReturnType<typeof createImageActivities>;

/** host:port, with IPv6 in brackets. */
export function parseEndpoint(endpoint: string): { host: string; port: number } {
  const match = /^(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/.exec(endpoint);
  const port = Number(match?.[3]);
  if (!match || port < 1 || port > 65535) {
    throw ApplicationFailure.nonRetryable(`invalid DWCP endpoint ${endpoint}`, 'InvalidEndpoint');
  }
  return { host: match[1] ?? match[2]!, port };
}
