/**
 * libvirt's error numbers that the driver tells apart, named as in libvirt's virErrorNumber. virsh prints only
 * the message, but libvirt prefixes every message with the fixed text of its code ("Requested operation is not
 * valid: …"), so the code is recovered from that prefix.
 */
export const LibvirtErrorCode = {
  noDomain: 'VIR_ERR_NO_DOMAIN',
  operationInvalid: 'VIR_ERR_OPERATION_INVALID',
  operationFailed: 'VIR_ERR_OPERATION_FAILED',
  operationTimeout: 'VIR_ERR_OPERATION_TIMEOUT',
  internalError: 'VIR_ERR_INTERNAL_ERROR',
  xmlError: 'VIR_ERR_XML_ERROR',
  configUnsupported: 'VIR_ERR_CONFIG_UNSUPPORTED',
  noSupport: 'VIR_ERR_NO_SUPPORT',
  invalidArg: 'VIR_ERR_INVALID_ARG',
  argumentUnsupported: 'VIR_ERR_ARGUMENT_UNSUPPORTED',
  systemError: 'VIR_ERR_SYSTEM_ERROR',
  noConnect: 'VIR_ERR_NO_CONNECT',
  operationAborted: 'VIR_ERR_OPERATION_ABORTED',
  operationUnsupported: 'VIR_ERR_OPERATION_UNSUPPORTED',
  migrateUnsafe: 'VIR_ERR_MIGRATE_UNSAFE',
  /** Not a libvirt code: the driver gave up waiting for the command. */
  commandTimeout: 'NOVACRON_COMMAND_TIMEOUT',
  unknown: 'VIR_ERR_UNKNOWN',
} as const;
export type LibvirtErrorCode = (typeof LibvirtErrorCode)[keyof typeof LibvirtErrorCode];

export class LibvirtError extends Error {
  override readonly name: string = 'LibvirtError';
  readonly code: LibvirtErrorCode;
  /** What the driver was doing, e.g. `start web-1`. */
  readonly operation: string;

  constructor(input: { message: string; code: LibvirtErrorCode; operation: string; cause?: unknown }) {
    super(input.message, input.cause === undefined ? undefined : { cause: input.cause });
    this.code = input.code;
    this.operation = input.operation;
  }

  /** Classifies virsh's stderr into the most specific error class. */
  static fromVirsh(input: { stderr: string; operation: string }): LibvirtError {
    const message = summarize(input.stderr);
    const code = codeFromMessage(input.stderr);
    const args = { message: `${input.operation}: ${message}`, code, operation: input.operation };
    if (CONNECTION_LOST.some((re) => re.test(input.stderr))) return new LibvirtConnectionLostError(args);
    if (code === LibvirtErrorCode.noDomain || /failed to get domain '/i.test(input.stderr)) {
      return new LibvirtNotFoundError({ ...args, code: LibvirtErrorCode.noDomain });
    }
    if (ALREADY_EXISTS.some((re) => re.test(input.stderr))) return new LibvirtAlreadyExistsError(args);
    if (code === LibvirtErrorCode.operationInvalid) return new LibvirtInvalidStateError(args);
    return new LibvirtError(args);
  }
}

export class LibvirtNotFoundError extends LibvirtError {
  override readonly name = 'LibvirtNotFoundError';
}

export class LibvirtAlreadyExistsError extends LibvirtError {
  override readonly name = 'LibvirtAlreadyExistsError';
}

/** The domain is in the wrong state for the request: starting a running domain, destroying a stopped one. */
export class LibvirtInvalidStateError extends LibvirtError {
  override readonly name = 'LibvirtInvalidStateError';
}

/** The daemon could not be reached or dropped the connection; the operation may or may not have happened. */
export class LibvirtConnectionLostError extends LibvirtError {
  override readonly name = 'LibvirtConnectionLostError';
}

/** A migration job that failed, with libvirt's message and code; the guest still runs on the source. */
export class LibvirtMigrationError extends LibvirtError {
  override readonly name: string = 'LibvirtMigrationError';
}

/** The migration job was aborted (by the caller's signal or another client's domjobabort) before it finished. */
export class LibvirtMigrationAbortedError extends LibvirtMigrationError {
  override readonly name = 'LibvirtMigrationAbortedError';
}

/** The migration did not finish within its deadline, so the driver aborted it. */
export class LibvirtMigrationTimeoutError extends LibvirtMigrationError {
  override readonly name = 'LibvirtMigrationTimeoutError';
}

/**
 * Classifies a failed `virsh migrate`: a missing domain and a lost connection keep their own classes (after a lost
 * connection the job may have finished), an aborted job is LibvirtMigrationAbortedError, and anything else is a
 * LibvirtMigrationError carrying libvirt's code.
 */
export function migrationErrorFromVirsh(input: { stderr: string; operation: string }): LibvirtError {
  const base = LibvirtError.fromVirsh(input);
  if (base instanceof LibvirtNotFoundError || base instanceof LibvirtConnectionLostError) return base;
  const args = { message: base.message, code: base.code, operation: input.operation };
  if (base.code === LibvirtErrorCode.operationAborted) return new LibvirtMigrationAbortedError(args);
  return new LibvirtMigrationError(args);
}

export function isLibvirtError(err: unknown): err is LibvirtError {
  return err instanceof LibvirtError;
}

export function isNotFound(err: unknown): err is LibvirtNotFoundError {
  return err instanceof LibvirtNotFoundError;
}

export function isAlreadyExists(err: unknown): err is LibvirtAlreadyExistsError {
  return err instanceof LibvirtAlreadyExistsError;
}

export function isInvalidState(err: unknown): err is LibvirtInvalidStateError {
  return err instanceof LibvirtInvalidStateError;
}

export function isConnectionLost(err: unknown): err is LibvirtConnectionLostError {
  return err instanceof LibvirtConnectionLostError;
}

export function isMigrationError(err: unknown): err is LibvirtMigrationError {
  return err instanceof LibvirtMigrationError;
}

export function isMigrationAborted(err: unknown): err is LibvirtMigrationAbortedError {
  return err instanceof LibvirtMigrationAbortedError;
}

/**
 * Runs an operation and treats the errors `accept` matches as "already done", for idempotent steps such as
 * destroying a domain that is already off. Resolves to undefined in that case.
 */
export async function tolerate<T>(operation: Promise<T>, accept: (err: unknown) => boolean): Promise<T | undefined> {
  try {
    return await operation;
  } catch (err) {
    if (accept(err)) return undefined;
    throw err;
  }
}

// Fixed message prefixes from libvirt's virErrorMsg(), matched at the start of an "error: " line.
const MESSAGE_PREFIXES: ReadonlyArray<readonly [RegExp, LibvirtErrorCode]> = [
  [/^Domain not found\b/, LibvirtErrorCode.noDomain],
  [/^Requested operation is not valid\b/, LibvirtErrorCode.operationInvalid],
  [/^operation failed\b/, LibvirtErrorCode.operationFailed],
  [/^Timed out during operation\b/, LibvirtErrorCode.operationTimeout],
  [/^internal error\b/, LibvirtErrorCode.internalError],
  [/^XML error\b/, LibvirtErrorCode.xmlError],
  [/^unsupported configuration\b/, LibvirtErrorCode.configUnsupported],
  [/^this function is not supported\b/, LibvirtErrorCode.noSupport],
  [/^invalid argument\b/, LibvirtErrorCode.invalidArg],
  [/^argument unsupported\b/, LibvirtErrorCode.argumentUnsupported],
  [/^failed to connect to the hypervisor\b/, LibvirtErrorCode.noConnect],
  // "operation aborted: job 'migration out' canceled by client"
  [/^operation aborted\b/, LibvirtErrorCode.operationAborted],
  // "Operation not supported: migration statistics are available only on the source host"
  [/^Operation not supported\b/, LibvirtErrorCode.operationUnsupported],
  // "Unsafe migration: Migration without shared storage is unsafe"
  [/^Unsafe migration\b/, LibvirtErrorCode.migrateUnsafe],
  // virsh checks this itself before calling libvirt, so no libvirt prefix comes with it.
  [/^Domain is already active\b/, LibvirtErrorCode.operationInvalid],
];

const CONNECTION_LOST: readonly RegExp[] = [
  /failed to connect to the hypervisor/i,
  /Failed to connect socket/i,
  /End of file while reading data/i,
  /Cannot (recv|write) data/i,
  /client socket is closed/i,
  /no valid connection/i,
  /Broken pipe/i,
];

const ALREADY_EXISTS: readonly RegExp[] = [/already exists/i, /is already defined/i];

function errorLines(stderr: string): string[] {
  return stderr
    .split('\n')
    .map((line) => line.trim())
    .filter((line) => line.length > 0)
    .map((line) => line.replace(/^error:\s*/, ''));
}

function codeFromMessage(stderr: string): LibvirtErrorCode {
  const lines = errorLines(stderr);
  // virsh prints its own context line first ("Failed to start domain 'x'"), then libvirt's message.
  for (const line of lines.slice().reverse()) {
    for (const [re, code] of MESSAGE_PREFIXES) if (re.test(line)) return code;
  }
  if (lines.some((line) => /^(Failed|Cannot|Unable) to\b.*: [A-Z][a-z]/.test(line)))
    return LibvirtErrorCode.systemError;
  return LibvirtErrorCode.unknown;
}

function summarize(stderr: string): string {
  const lines = errorLines(stderr);
  return lines.length === 0 ? 'virsh failed without a message' : lines.join('; ');
}
