/**
 * Typed DWCP errors. Each carries a stable `code` that also travels in ERROR frames, so a failure on the receiver
 * arrives at the sender as the same class, and activities can map `retryable: false` to non-retryable failures.
 */

export const DwcpErrorCode = {
  PROTOCOL: 'PROTOCOL',
  CHECKSUM: 'CHECKSUM',
  AUTH: 'AUTH',
  DISK_FULL: 'DISK_FULL',
  CANCELLED: 'CANCELLED',
  CONNECTION: 'CONNECTION',
  TIMEOUT: 'TIMEOUT',
  UNKNOWN_TRANSFER: 'UNKNOWN_TRANSFER',
  IO: 'IO',
} as const;
export type DwcpErrorCode = (typeof DwcpErrorCode)[keyof typeof DwcpErrorCode];

export class DwcpError extends Error {
  readonly code: DwcpErrorCode;
  /**
   * Whether trying the same transfer again can succeed: a reconnect within the send, or a later send of the same
   * transfer id (a retried activity), which resumes from the receiver's journal.
   */
  readonly retryable: boolean;

  constructor(code: DwcpErrorCode, message: string, options: { retryable: boolean; cause?: unknown }) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.code = code;
    this.retryable = options.retryable;
  }

  /** Rebuilds the error a peer reported in an ERROR frame, as the matching class. */
  static fromRemote(input: { code: string; message: string }): DwcpError {
    return DwcpError.fromCode({ code: input.code, message: `peer reported: ${input.message}` });
  }

  /** Rebuilds an error from its code, e.g. after it crossed a thread or a connection. */
  static fromCode(input: { code: string; message: string }): DwcpError {
    const { message } = input;
    switch (input.code) {
      case DwcpErrorCode.DISK_FULL:
        return new DwcpDiskFullError(message);
      case DwcpErrorCode.CHECKSUM:
        return new DwcpChecksumError(message);
      case DwcpErrorCode.AUTH:
        return new DwcpAuthError(message);
      case DwcpErrorCode.CANCELLED:
        return new DwcpCancelledError(message);
      case DwcpErrorCode.UNKNOWN_TRANSFER:
        return new DwcpUnknownTransferError(message);
      case DwcpErrorCode.IO:
        return new DwcpIoError(message);
      case DwcpErrorCode.CONNECTION:
        return new DwcpConnectionError(message);
      case DwcpErrorCode.TIMEOUT:
        return new DwcpTimeoutError(message);
      default:
        return new DwcpProtocolError(message);
    }
  }

  /**
   * Wraps a Node error (socket, TLS, fs) into a typed one. TLS certificate failures become auth errors, which are
   * final: retrying with the same credentials cannot succeed.
   */
  static fromNative(err: unknown, context: string): DwcpError {
    if (err instanceof DwcpError) return err;
    const code = typeof err === 'object' && err !== null && 'code' in err ? String(err.code) : '';
    const text = err instanceof Error ? err.message : String(err);
    if (code === 'ENOSPC' || code === 'EDQUOT') return new DwcpDiskFullError(`${context}: ${text}`, err);
    if (code === 'ABORT_ERR') return new DwcpCancelledError(`${context}: cancelled`, err);
    if (isTlsAuthFailure(code, text)) return new DwcpAuthError(`${context}: ${text}`, err);
    if (code.startsWith('E') && /^E[A-Z]+$/.test(code) && !NETWORK_CODES.has(code)) {
      return new DwcpIoError(`${context}: ${text}`, err);
    }
    return new DwcpConnectionError(`${context}: ${text}`, err);
  }
}

const NETWORK_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'EPIPE',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ECONNABORTED',
  'EADDRNOTAVAIL',
]);

const TLS_AUTH_CODES = new Set([
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'CERT_SIGNATURE_FAILURE',
  'CERT_HAS_EXPIRED',
  'CERT_NOT_YET_VALID',
  'CERT_REVOKED',
  'CERT_UNTRUSTED',
  'CERT_REJECTED',
  'INVALID_CA',
  'ERR_TLS_CERT_ALTNAME_INVALID',
]);

function isTlsAuthFailure(code: string, text: string): boolean {
  if (TLS_AUTH_CODES.has(code)) return true;
  // Alerts the peer sends when it rejects our certificate (unknown CA, bad or missing certificate).
  return /^ERR_SSL_.*(ALERT_(UNKNOWN_CA|BAD_CERTIFICATE|CERTIFICATE_|HANDSHAKE_FAILURE|DECRYPT_ERROR)|CERTIFICATE)/.test(
    code || text,
  );
}

export class DwcpProtocolError extends DwcpError {
  constructor(message: string, cause?: unknown) {
    super(DwcpErrorCode.PROTOCOL, message, { retryable: true, cause });
  }
}

export class DwcpChecksumError extends DwcpError {
  constructor(message: string, cause?: unknown) {
    super(DwcpErrorCode.CHECKSUM, message, { retryable: false, cause });
  }
}

export class DwcpAuthError extends DwcpError {
  constructor(message: string, cause?: unknown) {
    super(DwcpErrorCode.AUTH, message, { retryable: false, cause });
  }
}

export class DwcpDiskFullError extends DwcpError {
  constructor(message: string, cause?: unknown) {
    super(DwcpErrorCode.DISK_FULL, message, { retryable: false, cause });
  }
}

/**
 * One end stopped the transfer: its own AbortSignal, or the receiver's cancel() or close(). Retryable, because a
 * cancel loses nothing: the receiver keeps the partial file and its journal, and an agent that shut down (its
 * activities are cancelled as its worker stops) registers the same transfer again when it is back, so a retried
 * send resumes. The send that saw the cancel does not reconnect, though (sender-context.ts): the receiver has
 * dropped the transfer until it is registered again. Whoever cancelled on purpose knows it and does not retry (a
 * Temporal activity whose workflow cancelled it reports the cancellation, not this error).
 */
export class DwcpCancelledError extends DwcpError {
  constructor(message: string, cause?: unknown) {
    super(DwcpErrorCode.CANCELLED, message, { retryable: true, cause });
  }
}

export class DwcpConnectionError extends DwcpError {
  constructor(message: string, cause?: unknown) {
    super(DwcpErrorCode.CONNECTION, message, { retryable: true, cause });
  }
}

export class DwcpTimeoutError extends DwcpError {
  constructor(message: string, cause?: unknown) {
    super(DwcpErrorCode.TIMEOUT, message, { retryable: false, cause });
  }
}

/** The receiver has not (yet) registered the transfer; retryable because a restarting receiver registers it late. */
export class DwcpUnknownTransferError extends DwcpError {
  constructor(message: string, cause?: unknown) {
    super(DwcpErrorCode.UNKNOWN_TRANSFER, message, { retryable: true, cause });
  }
}

export class DwcpIoError extends DwcpError {
  constructor(message: string, cause?: unknown) {
    super(DwcpErrorCode.IO, message, { retryable: false, cause });
  }
}

export function isDwcpError(err: unknown, code?: DwcpErrorCode): err is DwcpError {
  return err instanceof DwcpError && (code === undefined || err.code === code);
}
