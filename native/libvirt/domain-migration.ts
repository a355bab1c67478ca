/**
 * Live migration through `virsh migrate` (virDomainMigrateToURI3): the job's parameters as virsh options, and the
 * job itself, bounded by its own deadline rather than the per-call timeout, and aborted through domjobabort when
 * the caller's signal fires. LibvirtConnection exposes it as `domainMigrateToURI3`; docs/libvirt-driver.md has the
 * measurements behind the choices here.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

import {
  LibvirtError,
  LibvirtErrorCode,
  LibvirtMigrationAbortedError,
  LibvirtMigrationError,
  LibvirtMigrationTimeoutError,
  isInvalidState,
  isMigrationAborted,
  migrationErrorFromVirsh,
} from './errors';
import { UNLIMITED_MIGRATION_BANDWIDTH_MIBPS } from './libvirt-types';
import { assertInteger, domainArg, invalidArgument } from './virsh-args';

export interface DomainMigrateInput {
  name: string;
  /** The destination's libvirt URI: as this client reaches it (managed direct), or as the source daemon does (p2p). */
  destUri: string;
  /** Peer-to-peer: the source daemon drives the destination. It refuses a destination URI naming this machine. */
  p2p?: boolean;
  /** Where QEMU streams to, e.g. `tcp://10.0.0.2` or with a port; unset, libvirt asks the destination. */
  migrateUri?: string;
  /** The address the destination's QEMU listens on for the stream. */
  listenAddress?: string;
  /** Define the domain on the destination (default true). */
  persistDest?: boolean;
  /** Undefine it on the source once it runs on the destination (default true). */
  undefineSource?: boolean;
  /** Skip libvirt's safety check (disks neither on shared storage nor cache=none); the harness's local disks need it. */
  unsafe?: boolean;
  /** multifd channels; 1 or unset is one classic stream. */
  parallelConnections?: number;
  /** `--comp-methods`; libvirt 9.0 knows `mt` and `xbzrle` (it refuses `zstd`). */
  compressionMethods?: string[];
  /** Unset: the domain's stored speed, which libvirt leaves unlimited unless told (UNLIMITED_MIGRATION_BANDWIDTH_MIBPS). */
  bandwidthMiBps?: number;
  /**
   * Set with migrate-setmaxdowntime before the job, since libvirt 9.0 has no migration parameter for it. QEMU keeps
   * it for the job; at the end libvirt restores what it was before, so a value raised mid-job does not outlive it.
   */
  maxDowntimeMs?: number;
  autoConverge?: boolean | { initialPercent?: number; incrementPercent?: number };
  /** Arms post-copy; `domainMigrateStartPostCopy` switches to it. */
  postCopy?: boolean;
  /** The domain XML the destination runs (only host-side details such as file paths may differ). */
  destXml?: string;
  /** The definition the destination keeps; unset, the source's. */
  persistentXml?: string;
  /** The migration's deadline: the job is aborted when it passes. */
  timeoutMs: number;
  /** Aborts the job (domjobabort) and rejects with LibvirtMigrationAbortedError. */
  signal?: AbortSignal;
}

/** Runs one virsh command on the connection; `classify` replaces the default error mapping. */
export type VirshCall = (
  operation: string,
  args: readonly string[],
  options?: { timeoutMs?: number; classify?: (input: { stderr: string; operation: string }) => LibvirtError },
) => Promise<string>;

/** How long virsh may take to exit after the abort, before it is killed. */
const ABORT_GRACE_MS = 60_000;
/** Between aborts while libvirt has no job to abort yet (it is still preparing the destination). */
const ABORT_RETRY_MS = 200;
/**
 * Node's timers hold at most 2^31-1 ms (24.8 days) and fire at once beyond it (TimeoutOverflowWarning), which would
 * abort a job the moment it started. A deadline that long is as good as none: it is capped, grace included.
 */
export const MAX_JOB_DEADLINE_MS = 2_147_483_647 - ABORT_GRACE_MS;
const MAX_PARALLEL_CONNECTIONS = 255;
const MAX_DOWNTIME_MS = 2_147_483_647;
const URI_PATTERN = /^[a-z][a-z0-9+.-]*:\/\/[^\s'"\\]*$/i;
const ADDRESS_PATTERN = /^[0-9A-Za-z.:[\]-]+$/;
const COMPRESSION_PATTERN = /^[a-z][a-z0-9-]*$/;

/** virDomainMigrateToURI3 with VIR_MIGRATE_LIVE. Resolves once the domain runs on the destination. */
export async function migrateToURI3(virsh: VirshCall, input: DomainMigrateInput): Promise<void> {
  const operation = `migrate ${input.name}`;
  validateMigrateInput(input);
  const abortedBeforeStart = () =>
    new LibvirtMigrationAbortedError({
      message: `${operation}: aborted before the job started`,
      code: LibvirtErrorCode.operationAborted,
      operation,
    });
  if (input.signal?.aborted) throw abortedBeforeStart();
  // virsh reads XML only from files (see domainDefineXML).
  const dir =
    input.destXml === undefined && input.persistentXml === undefined
      ? undefined
      : await mkdtemp(join(tmpdir(), 'novacron-migrate-'));
  try {
    const files: { destXml?: string; persistentXml?: string } = {};
    for (const key of ['destXml', 'persistentXml'] as const) {
      const xml = input[key];
      if (xml === undefined || dir === undefined) continue;
      const file = join(dir, `${key}.xml`);
      await writeFile(file, xml, { mode: 0o600 });
      files[key] = file;
    }
    if (input.maxDowntimeMs !== undefined) {
      await virsh(
        `migrate-setmaxdowntime ${input.name}`,
        maxDowntimeArgs({ ...input, downtimeMs: input.maxDowntimeMs }),
      );
    }
    if (input.signal?.aborted) throw abortedBeforeStart();
    await runJob(virsh, operation, migrateArgs(input, files), input);
  } finally {
    if (dir !== undefined) await rm(dir, { recursive: true, force: true });
  }
}

/**
 * A job that finishes although an abort was asked for (it had reached the switchover) resolves: the guest runs on
 * the destination, and saying otherwise would send the caller to the wrong host.
 */
async function runJob(virsh: VirshCall, operation: string, args: string[], input: DomainMigrateInput): Promise<void> {
  let ended = false;
  let stopped: 'aborted' | 'timeout' | undefined;
  let abortRefused: string | undefined;
  let aborting: Promise<void> | undefined;
  const abortUntilEnded = async (): Promise<void> => {
    while (!ended) {
      try {
        await virsh(`domjobabort ${input.name}`, abortJobArgs(input));
        return;
      } catch (err) {
        // Before the job starts there is nothing to abort yet; anything else (post-copy cannot be aborted) is final.
        if (!(isInvalidState(err) && /no job is active/i.test(err.message))) {
          abortRefused = err instanceof Error ? err.message : String(err);
          return;
        }
        await sleep(ABORT_RETRY_MS);
      }
    }
  };
  const stop = (reason: 'aborted' | 'timeout') => {
    if (stopped !== undefined || ended) return;
    stopped = reason;
    aborting = abortUntilEnded();
  };
  const onAbort = () => stop('aborted');
  const deadlineMs = Math.min(input.timeoutMs, MAX_JOB_DEADLINE_MS);
  const timer = setTimeout(() => stop('timeout'), deadlineMs);
  input.signal?.addEventListener('abort', onAbort, { once: true });
  try {
    await virsh(operation, args, { timeoutMs: deadlineMs + ABORT_GRACE_MS, classify: migrationErrorFromVirsh });
  } catch (err) {
    throw stoppedError({ err, operation, stopped, abortRefused, timeoutMs: deadlineMs });
  } finally {
    ended = true;
    clearTimeout(timer);
    input.signal?.removeEventListener('abort', onAbort);
    await aborting;
  }
}

function stoppedError(input: {
  err: unknown;
  operation: string;
  stopped: 'aborted' | 'timeout' | undefined;
  abortRefused: string | undefined;
  timeoutMs: number;
}): unknown {
  const { err, operation, stopped } = input;
  if (stopped === undefined || !(err instanceof LibvirtError)) return err;
  // A lost connection or a vanished domain says more about where the guest is than "aborted" would.
  const ours = err instanceof LibvirtMigrationError || err.code === LibvirtErrorCode.commandTimeout;
  if (!ours) return err;
  const refused = input.abortRefused === undefined ? '' : ` (the abort was refused: ${input.abortRefused})`;
  if (stopped === 'timeout') {
    return new LibvirtMigrationTimeoutError({
      message: `${operation}: not finished within ${input.timeoutMs} ms, aborted${refused}: ${err.message}`,
      code: LibvirtErrorCode.operationTimeout,
      operation,
      cause: err,
    });
  }
  if (isMigrationAborted(err)) return err;
  return new LibvirtMigrationAbortedError({
    message: `${operation}: aborted${refused}: ${err.message}`,
    code: err.code,
    operation,
    cause: err,
  });
}

export function migrateArgs(input: DomainMigrateInput, files: { destXml?: string; persistentXml?: string }): string[] {
  const args = ['migrate', '--domain', input.name, '--desturi', input.destUri, '--live'];
  const flag = (on: boolean | undefined, name: string) => {
    if (on) args.push(name);
  };
  const option = (value: string | number | undefined, name: string) => {
    if (value !== undefined) args.push(name, String(value));
  };
  flag(input.p2p, '--p2p');
  flag(input.persistDest ?? true, '--persistent');
  flag(input.undefineSource ?? true, '--undefinesource');
  flag(input.unsafe, '--unsafe');
  option(input.migrateUri, '--migrateuri');
  option(input.listenAddress, '--listen-address');
  if ((input.parallelConnections ?? 1) > 1)
    args.push('--parallel', '--parallel-connections', String(input.parallelConnections));
  if (input.compressionMethods?.length) args.push('--comp-methods', input.compressionMethods.join(','));
  option(input.bandwidthMiBps, '--bandwidth');
  if (input.autoConverge) {
    args.push('--auto-converge');
    if (typeof input.autoConverge === 'object') {
      option(input.autoConverge.initialPercent, '--auto-converge-initial');
      option(input.autoConverge.incrementPercent, '--auto-converge-increment');
    }
  }
  flag(input.postCopy, '--postcopy');
  option(files.destXml, '--xml');
  option(files.persistentXml, '--persistent-xml');
  return args;
}

export function maxDowntimeArgs(input: { name: string; downtimeMs: number }): string[] {
  assertInteger(input.downtimeMs, 1, MAX_DOWNTIME_MS, 'downtimeMs');
  return ['migrate-setmaxdowntime', ...domainArg(input.name), '--downtime', String(input.downtimeMs)];
}

export function maxSpeedArgs(input: { name: string; bandwidthMiBps: number }): string[] {
  assertInteger(input.bandwidthMiBps, 1, UNLIMITED_MIGRATION_BANDWIDTH_MIBPS, 'bandwidthMiBps');
  return ['migrate-setspeed', ...domainArg(input.name), '--bandwidth', String(input.bandwidthMiBps)];
}

export function abortJobArgs(input: { name: string }): string[] {
  return ['domjobabort', ...domainArg(input.name)];
}

export function dirtyRateCalcArgs(input: { name: string; seconds: number }): string[] {
  // QEMU's bounds for calc-dirty-rate's calc-time.
  assertInteger(input.seconds, 1, 60, 'seconds');
  return ['domdirtyrate-calc', ...domainArg(input.name), '--seconds', String(input.seconds)];
}

function validateMigrateInput(input: DomainMigrateInput): void {
  domainArg(input.name);
  if (typeof input.destUri !== 'string' || !URI_PATTERN.test(input.destUri)) {
    throw invalidArgument(`destUri ${JSON.stringify(input.destUri)} is not a libvirt URI`);
  }
  if (input.migrateUri !== undefined && !URI_PATTERN.test(input.migrateUri)) {
    throw invalidArgument(`migrateUri ${JSON.stringify(input.migrateUri)} is not a URI such as tcp://10.0.0.2`);
  }
  if (input.listenAddress !== undefined && !ADDRESS_PATTERN.test(input.listenAddress)) {
    throw invalidArgument(`listenAddress ${JSON.stringify(input.listenAddress)} is not an address`);
  }
  for (const method of input.compressionMethods ?? []) {
    if (!COMPRESSION_PATTERN.test(method)) throw invalidArgument(`compression method ${JSON.stringify(method)}`);
  }
  assertInteger(input.timeoutMs, 1, Number.MAX_SAFE_INTEGER, 'timeoutMs');
  if (input.parallelConnections !== undefined) {
    assertInteger(input.parallelConnections, 1, MAX_PARALLEL_CONNECTIONS, 'parallelConnections');
  }
  if (input.bandwidthMiBps !== undefined) {
    assertInteger(input.bandwidthMiBps, 1, UNLIMITED_MIGRATION_BANDWIDTH_MIBPS, 'bandwidthMiBps');
  }
  if (input.maxDowntimeMs !== undefined) assertInteger(input.maxDowntimeMs, 1, MAX_DOWNTIME_MS, 'maxDowntimeMs');
  if (typeof input.autoConverge === 'object') {
    const { initialPercent, incrementPercent } = input.autoConverge;
    if (initialPercent !== undefined) assertInteger(initialPercent, 1, 99, 'autoConverge.initialPercent');
    if (incrementPercent !== undefined) assertInteger(incrementPercent, 1, 99, 'autoConverge.incrementPercent');
  }
}
