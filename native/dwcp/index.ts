/**
 * DWCP, the NovaCron data plane: moves disk images and migration streams between hypervisor hosts.
 *
 * - `sendFile` / `sendStream` and `DwcpReceiver` (send-file.ts, send-stream.ts, receiver.ts and the modules they
 *   build on): N parallel mutual-TLS TCP streams, per-chunk CRC and sha256, end-to-end sha256, NACK-and-resend,
 *   resumable through a receiver-side journal, dedup against a chunk index of base images, sparse targets,
 *   backpressure, progress and AbortSignal cancellation.
 * - Chunking and encoding: FastCDC content-defined chunks, zero and incompressible detection, zstd with a level
 *   chosen from link speed versus CPU speed, all CPU work in a worker pool.
 * - Mode: `probeLink` measures RTT and throughput; `classifyMode` and `resolveTransferParameters` turn the figures
 *   into datacenter / hybrid / internet parameters.
 * - Certificates: a private CA and host certificates via the openssl CLI.
 *
 * Errors are DwcpError subclasses with a stable `code` and a `retryable` flag; see errors.ts.
 */
export {
  createCertificateAuthority,
  issueHostCertificate,
  readTlsMaterial,
  type CertificateAuthority,
  type HostCertificate,
  type TlsMaterial,
} from './certs';
export { ChunkIndex, isSidecarPath, type ChunkLocation } from './chunk-index';
export {
  ContentChunker,
  MAX_CHUNK_BYTES,
  chunkLengths,
  chunkingParams,
  fixedChunking,
  isZeroChunk,
  looksIncompressible,
  type ChunkingParams,
} from './chunking';
export { dialTls, type DialInput, type Dialer } from './connection';
export {
  COMPRESSION_OFF,
  ZSTD_LEVEL_PROFILE,
  chooseCompressionLevel,
  decodeChunk,
  encodeChunk,
  type CompressionChoice,
  type EncodedChunk,
} from './encoding';
export { DwcpWorkerPool, hashFileInPool, measureCompression, sampleFileData } from './worker-pool';
export {
  DwcpAuthError,
  DwcpCancelledError,
  DwcpChecksumError,
  DwcpConnectionError,
  DwcpDiskFullError,
  DwcpError,
  DwcpErrorCode,
  DwcpIoError,
  DwcpProtocolError,
  DwcpTimeoutError,
  DwcpUnknownTransferError,
  isDwcpError,
} from './errors';
export { ChunkEncoding, FrameDecoder, FrameType, encodeFrame, type Frame } from './framing';
export { manifestEntry, type Manifest, type ManifestEntry } from './manifest';
export {
  DwcpMode,
  MODE_PARAMETERS,
  chooseStreamCount,
  classifyMode,
  probeLink,
  resolveTransferParameters,
  type LinkProbeResult,
  type ModeParameters,
  type TransferParameters,
} from './mode';
export { DwcpReceiver, type DwcpReceiverOptions } from './receiver';
export type { ExpectFileInput } from './file-receive-transfer';
export type { ExpectStreamInput } from './stream-receive-transfer';
export { sendFile, type SendFileInput } from './send-file';
export {
  DEFAULT_IDLE_FLUSH_MS,
  sendStream,
  sendStreamChannels,
  type SendStreamChannelsInput,
  type SendStreamInput,
} from './send-stream';
export type { SenderOptions } from './sender-context';
export type { ChunkStats, ReceiveResult, SendResult, TransferProgress } from './transfer-types';
