/**
 * The host watchdog: a small process beside the host agent, as Proxmox's watchdog-mux is beside its LRM. The agent
 * arms it after every successful lease renewal with the same deadline its own self-fence timer keeps; if that
 * deadline passes without a newer arm (the agent died, hung, or cannot renew), the watchdog destroys every NovaCron
 * guest on the host's libvirtd and exits. A witness cannot tell "agent dead, guests still running" from "host dead",
 * so the guests must not outlive the agent's lease whichever process dies (docs/self-fencing.md).
 *
 * Protocol on stdin, one JSON object a line: `{"arm":"<deadline>"}`, the deadline as process.hrtime.bigint()
 * nanoseconds in decimal. That clock is CLOCK_MONOTONIC on Linux (libuv's uv_hrtime), one clock for every process
 * of the machine's time namespace, so the agent's reading means the same here. `{"disarm":true}` on a clean
 * shutdown: the watchdog exits without touching a guest. End of input without a disarm means the agent died: the
 * last deadline still holds.
 *
 * The agent starts it detached (its own session and process group), so a signal to the agent's group spares it,
 * and respawns it when it exits. Arguments: --host-id, --libvirt-uri, --log-level.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import type { Socket } from 'node:net';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';
import type { Logger } from 'pino';
import { configSchema, type NovacronConfig } from '../config/schema';
import { destroyNovaCronGuests } from '../native/libvirt/guest-fence';
import { LibvirtConnection } from '../native/libvirt/libvirt-connection';
import { createLogger } from '../observability/logger';

/** Exit codes: the agent counts a fence its watchdog made. */
export const WatchdogExit = { done: 0, failed: 1, fenced: 3 } as const;

const NS_PER_MS = 1_000_000n;
/** A fence that could not reach libvirtd is tried this many times, this far apart, before the watchdog gives up. */
const FIRE_ATTEMPTS = 10;
const FIRE_RETRY_MS = 500;
const VIRSH_TIMEOUT_MS = 10_000;

export interface HostWatchdogLink {
  /** The current watchdog's pid; undefined while it is being respawned. */
  pid(): number | undefined;
  /** Sends the deadline (monotonic ns) by which the guests must stop unless armed again. */
  arm(deadline: bigint): void;
  /** Clean shutdown: disarms the watchdog and waits for it to exit. */
  disarm(): Promise<void>;
  /** The agent is going down uncleanly: leave the watchdog armed, to fire at the last deadline. */
  abandon(): void;
}

export interface StartHostWatchdogInput {
  hostId: string;
  libvirtUri: string;
  logLevel: NovacronConfig['system']['logLevel'];
  logger: Logger;
  /** How long after a watchdog exits the agent starts the next one. */
  respawnDelayMs: number;
  /** A fence the watchdog made (it exited with WatchdogExit.fenced). */
  onFenced?: () => void;
}

/** Spawns the watchdog and keeps one running until disarmed or abandoned. */
export function startHostWatchdog(input: StartHostWatchdogInput): HostWatchdogLink {
  const { hostId, logger } = input;
  let child: ChildProcess | undefined;
  let lastDeadline: bigint | undefined;
  let ending = false;
  let respawnTimer: NodeJS.Timeout | undefined;
  let exited: Promise<void> = Promise.resolve();

  const send = (message: object) => {
    const stdin = child?.stdin;
    if (stdin && !stdin.destroyed && stdin.writable) stdin.write(`${JSON.stringify(message)}\n`);
  };

  const spawnOne = () => {
    respawnTimer = undefined;
    const ts = __filename.endsWith('.ts');
    const current = spawn(
      process.execPath,
      [
        ...(ts ? ['--import', 'tsx'] : []),
        __filename,
        '--host-id',
        hostId,
        '--libvirt-uri',
        input.libvirtUri,
        '--log-level',
        input.logLevel,
      ],
      // Inherited output: a pipe read by the agent would break when the agent dies, just when the logs matter.
      { cwd: path.resolve(__dirname, '..'), detached: true, stdio: ['pipe', 'inherit', 'inherit'] },
    );
    child = current;
    // Neither the process nor its pipe may keep a stopping agent alive.
    current.unref();
    (current.stdin as Socket | null)?.unref();
    // EPIPE once the watchdog is gone: its exit, seen below, is what matters.
    current.stdin?.on('error', () => undefined);
    let settle!: () => void;
    exited = new Promise((resolve) => (settle = resolve));
    let gone = false;
    const onGone = (code: number | null, signal: NodeJS.Signals | null, err?: Error) => {
      if (gone) return;
      gone = true;
      settle();
      if (child === current) child = undefined;
      if (code === WatchdogExit.fenced) input.onFenced?.();
      if (ending) return;
      logger.warn({ hostId, pid: current.pid, code, signal, err }, 'host watchdog exited; starting another');
      respawnTimer = setTimeout(spawnOne, input.respawnDelayMs);
      respawnTimer.unref();
    };
    current.once('exit', (code, signal) => onGone(code, signal));
    current.once('error', (err) => onGone(null, null, err));
    if (current.pid !== undefined) logger.info({ hostId, pid: current.pid }, 'host watchdog started');
    if (lastDeadline !== undefined && lastDeadline > process.hrtime.bigint()) send({ arm: lastDeadline.toString() });
  };

  const end = () => {
    ending = true;
    if (respawnTimer) clearTimeout(respawnTimer);
  };

  spawnOne();
  return {
    pid: () => child?.pid,
    arm(deadline) {
      lastDeadline = deadline;
      send({ arm: deadline.toString() });
    },
    async disarm() {
      end();
      const current = child;
      if (!current) return;
      send({ disarm: true });
      current.stdin?.end();
      const timer = setTimeout(() => current.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(timer);
    },
    abandon() {
      end();
      child?.stdin?.end();
    },
  };
}

/** The watchdog process itself. */
async function runWatchdog(): Promise<void> {
  const { values } = parseArgs({
    options: {
      'host-id': { type: 'string' },
      'libvirt-uri': { type: 'string' },
      'log-level': { type: 'string', default: 'info' },
    },
  });
  const hostId = values['host-id'];
  const uri = values['libvirt-uri'];
  if (!hostId || !uri) throw new Error('usage: host-watchdog --host-id ID --libvirt-uri URI [--log-level LEVEL]');
  const config = configSchema.parse({ system: { logLevel: values['log-level'] } });
  const logger = createLogger({ service: 'host-watchdog', config });
  const conn = new LibvirtConnection({ uri, commandTimeoutMs: VIRSH_TIMEOUT_MS });
  // An operator's Ctrl-C reaches the agent's terminal group, not this session; a stray SIGINT must not disarm it.
  process.on('SIGINT', () => logger.warn({ hostId }, 'host watchdog ignores SIGINT'));

  let deadline: bigint | undefined;
  let timer: NodeJS.Timeout | undefined;
  let firing = false;
  let agentGone = false;

  const exit = (code: number) => {
    if (timer) clearTimeout(timer);
    process.exit(code);
  };

  const fire = async () => {
    firing = true;
    const lateMs = Number((process.hrtime.bigint() - (deadline as bigint)) / NS_PER_MS);
    for (let attempt = 1; attempt <= FIRE_ATTEMPTS; attempt++) {
      try {
        const result = await destroyNovaCronGuests(conn);
        const guests = result.stopped.map((guest) => ({ name: guest.name, vmId: guest.vmId }));
        if (result.failed.length === 0) {
          if (guests.length > 0) {
            logger.error({ hostId, by: 'watchdog', agentGone, lateMs, guests }, 'self-fenced');
            exit(WatchdogExit.fenced);
          }
          logger.info({ hostId, agentGone, lateMs }, 'host watchdog deadline passed with no NovaCron guest running');
          exit(WatchdogExit.done);
        }
        logger.error({ hostId, attempt, guests, failed: result.failed }, 'host watchdog could not stop every guest');
      } catch (err) {
        logger.error({ err, hostId, attempt }, 'host watchdog could not reach libvirtd');
      }
      await new Promise((resolve) => setTimeout(resolve, FIRE_RETRY_MS));
    }
    exit(WatchdogExit.failed);
  };

  const schedule = () => {
    if (timer) clearTimeout(timer);
    if (deadline === undefined || firing) return;
    const leftMs = Number((deadline - process.hrtime.bigint()) / NS_PER_MS);
    if (leftMs <= 0) {
      void fire();
      return;
    }
    // Re-checked when it fires: timers may run early or late, the monotonic deadline is what counts.
    timer = setTimeout(schedule, Math.min(leftMs, 1000));
  };

  const lines = createInterface({ input: process.stdin });
  lines.on('line', (line) => {
    let message: { arm?: unknown; disarm?: unknown };
    try {
      message = JSON.parse(line) as typeof message;
    } catch {
      logger.warn({ hostId, line }, 'host watchdog ignores a line that is not JSON');
      return;
    }
    if (message.disarm === true && !firing) {
      logger.info({ hostId }, 'host watchdog disarmed');
      exit(WatchdogExit.done);
    } else if (typeof message.arm === 'string' && /^\d+$/.test(message.arm)) {
      const armed = BigInt(message.arm);
      if (deadline === undefined || armed > deadline) deadline = armed;
      schedule();
    } else {
      logger.warn({ hostId, line }, 'host watchdog ignores an unknown message');
    }
  });
  lines.on('close', () => {
    agentGone = true;
    if (deadline === undefined) {
      logger.info({ hostId }, 'host agent gone before arming its watchdog; nothing to guard');
      exit(WatchdogExit.done);
    }
    const leftMs = Number(((deadline as bigint) - process.hrtime.bigint()) / NS_PER_MS);
    logger.warn({ hostId, leftMs }, 'host agent gone without disarming; the watchdog fires at its last deadline');
  });
  logger.info({ hostId, pid: process.pid, uri }, 'host watchdog running');
}

if (require.main === module) {
  runWatchdog().catch((err: unknown) => {
    process.stderr.write(`novacron host watchdog: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(WatchdogExit.failed);
  });
}
