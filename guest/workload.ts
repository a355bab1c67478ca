/**
 * The test guest's knobs as a VM definition carries them (SMBIOS OEM strings, see workload.c), and what its serial
 * console says, read back on the host.
 */

/** What workload.c uses when the VM's definition names no working set. */
export const DEFAULT_WORKING_SET_MIB = 64;
// The same bounds as workload.c, which refuses anything beyond them (and then prints no heartbeat).
const MAX_DIRTY_MIBPS = 100_000;
const MAX_WORKING_SET_MIB = 65_536;

export interface TestGuestWorkload {
  /** MiB of distinct 4 KiB pages the guest rewrites per second; 0 leaves its memory idle. */
  dirtyMiBps: number;
  /** The memory the writes cycle through; DEFAULT_WORKING_SET_MIB when left out. */
  workingSetMiB?: number;
}

export class TestGuestWorkloadError extends Error {
  override readonly name = 'TestGuestWorkloadError';
}

function assertIntegerIn(value: number, min: number, max: number, what: string): void {
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new TestGuestWorkloadError(`${what} must be an integer in [${min}, ${max}], got ${String(value)}`);
  }
}

/** The OEM strings (DomainSpec.oemStrings) that set a test guest's workload. */
export function testGuestOemStrings(workload: TestGuestWorkload): string[] {
  assertIntegerIn(workload.dirtyMiBps, 0, MAX_DIRTY_MIBPS, 'dirtyMiBps');
  const workingSetMiB = workload.workingSetMiB ?? DEFAULT_WORKING_SET_MIB;
  assertIntegerIn(workingSetMiB, 1, MAX_WORKING_SET_MIB, 'workingSetMiB');
  return [`novacron.dirty-mibps=${workload.dirtyMiBps}`, `novacron.working-set-mib=${workingSetMiB}`];
}

export interface ConsoleReport {
  /** Each heartbeat's counter, in the order printed. */
  heartbeats: number[];
  /** The settings the workload started with, as it read them. */
  started?: { uptimeSeconds: number; dirtyMiBps: number; workingSetMiB: number };
  /** Set when the workload refused its settings; it then runs no workload and prints no heartbeat. */
  error?: string;
  /** The guest kernel's panic line, when it printed one: no heartbeat follows it, however long one waits. */
  panic?: string;
}

const HEARTBEAT = /^novacron-testguest heartbeat (\d+)\r?$/gm;
const STARTED =
  /^novacron-testguest: workload started at ([\d.]+) s uptime: dirty-mibps=(\d+) working-set-mib=(\d+)\r?$/m;
const ERROR = /^novacron-testguest: error: (.*?)\r?$/m;
// The kernel prints it after a timestamp, and again at the end of the trace inside `---[ end ... ]---`.
const PANIC = /Kernel panic - .*?(?= \]---|\r|$)/m;

/** Reads a test guest's console log (kernel and syslinux lines in between are ignored). */
export function parseConsoleLog(text: string): ConsoleReport {
  const heartbeats = [...text.matchAll(HEARTBEAT)].map((match) => Number(match[1]));
  const started = STARTED.exec(text);
  const error = ERROR.exec(text)?.[1];
  const panic = PANIC.exec(text)?.[0];
  return {
    heartbeats,
    ...(started
      ? {
          started: {
            uptimeSeconds: Number(started[1]),
            dirtyMiBps: Number(started[2]),
            workingSetMiB: Number(started[3]),
          },
        }
      : {}),
    ...(error === undefined ? {} : { error }),
    ...(panic === undefined ? {} : { panic }),
  };
}
