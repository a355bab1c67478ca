/**
 * LibvirtConnection, the driver's entry point: one method per libvirt call it needs, each one `virsh -c <uri>`
 * process, with names and typed inputs that mirror libvirt's API. What virsh prints is parsed in virsh-parsers.ts,
 * the event stream lives in domain-event-stream.ts, and the types in libvirt-types.ts.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

import { createProcessRunner } from './command-runner';
import type { CommandRunner } from './command-runner';
import { DomainEventStream } from './domain-event-stream';
import {
  abortJobArgs,
  dirtyRateCalcArgs,
  maxDowntimeArgs,
  maxSpeedArgs,
  migrateToURI3,
  type DomainMigrateInput,
  type VirshCall,
} from './domain-migration';
import { LibvirtError, LibvirtErrorCode, isInvalidState } from './errors';
import {
  DomainJobOperation,
  DomainJobType,
  DomainState,
  DomainUndefineFlag,
  ShutdownOutcome,
  type ConnectVersion,
  type DomainDescription,
  type DomainDirtyRate,
  type DomainInfo,
  type DomainJobStats,
  type DomainRef,
  type DomainSummary,
  type NodeInfo,
  type NodeMemoryStats,
} from './libvirt-types';
import { domainArg, invalidArgument } from './virsh-args';
import {
  isPostCopyStateReason,
  parseColonFields,
  parseDirtyRate,
  parseEqualsFields,
  parseJobStats,
  stateFromNumber,
  stateFromVirshWord,
} from './virsh-parsers';
import { childElement, parseXml, textContent } from './xml';

export interface LibvirtConnectionOptions {
  /** e.g. `qemu:///system` or `qemu:///system?socket=/srv/hv1/sock/libvirt-sock` */
  uri: string;
  runner?: CommandRunner;
  virshPath?: string;
  /** Per virsh invocation; a hung daemon otherwise hangs the activity. */
  commandTimeoutMs?: number;
}

const DEFAULT_COMMAND_TIMEOUT_MS = 120_000;
const DEFAULT_SHUTDOWN_POLL_MS = 250;

/**
 * A libvirt connection whose methods mirror libvirt's API names. Each call runs one `virsh -c <uri>` process:
 * docs/libvirt-driver.md measures the alternatives and explains the choice. The runner is injected so that
 * unit tests can replace virsh.
 */
export class LibvirtConnection {
  readonly uri: string;
  private readonly runner: CommandRunner;
  private readonly virshPath: string;
  private readonly commandTimeoutMs: number;

  constructor(options: LibvirtConnectionOptions) {
    this.uri = options.uri;
    this.runner = options.runner ?? createProcessRunner();
    this.virshPath = options.virshPath ?? 'virsh';
    this.commandTimeoutMs = options.commandTimeoutMs ?? DEFAULT_COMMAND_TIMEOUT_MS;
  }

  async connectGetVersion(): Promise<ConnectVersion> {
    const fields = parseColonFields(await this.virsh('version', ['version']));
    return { library: fields['Using library'] ?? '', hypervisor: fields['Running hypervisor'] ?? '' };
  }

  /**
   * Defines (or, for the same name and UUID, redefines) a persistent domain. A different UUID under an existing
   * name fails with LibvirtAlreadyExistsError.
   */
  async domainDefineXML(input: { xml: string; validate?: boolean }): Promise<DomainDescription> {
    const name = domainNameFromXml(input.xml);
    // virsh reads XML only from a file. /dev/stdin is no substitute: Node's stdio pipes are socketpairs, and
    // opening /dev/stdin on a socket fails with ENXIO.
    const dir = await mkdtemp(join(tmpdir(), 'novacron-define-'));
    try {
      const file = join(dir, 'domain.xml');
      await writeFile(file, input.xml, { mode: 0o600 });
      await this.virsh(`define ${name}`, ['define', '--file', file, ...(input.validate ? ['--validate'] : [])]);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
    return this.domainLookupByName({ name });
  }

  async domainLookupByName(input: DomainRef): Promise<DomainDescription> {
    const fields = parseColonFields(await this.virsh(`lookup ${input.name}`, ['dominfo', ...domainArg(input.name)]));
    const id = fields['Id'];
    return {
      id: id === undefined || id === '-' ? undefined : Number(id),
      name: fields['Name'] ?? input.name,
      uuid: fields['UUID'] ?? '',
      state: stateFromVirshWord(fields['State'] ?? ''),
      persistent: fields['Persistent'] === 'yes',
      autostart: fields['Autostart'] === 'enable',
    };
  }

  /** `migratable` (VIR_DOMAIN_XML_MIGRATABLE) leaves out runtime detail: the form a migration's `destXml` starts from. */
  async domainGetXMLDesc(input: DomainRef & { inactive?: boolean; migratable?: boolean }): Promise<string> {
    const args = [
      'dumpxml',
      ...domainArg(input.name),
      ...(input.inactive ? ['--inactive'] : []),
      ...(input.migratable ? ['--migratable'] : []),
    ];
    return this.virsh(`dumpxml ${input.name}`, args);
  }

  /** virDomainCreate: starts a defined domain. */
  async domainCreate(input: DomainRef): Promise<void> {
    await this.virsh(`start ${input.name}`, ['start', ...domainArg(input.name)]);
  }

  /** Asks the guest to power off (ACPI); returns before it has. See `domainShutdownOrDestroy`. */
  async domainShutdown(input: DomainRef): Promise<void> {
    await this.virsh(`shutdown ${input.name}`, ['shutdown', ...domainArg(input.name)]);
  }

  /** Hard power-off. `graceful` sends SIGTERM only, without escalating to SIGKILL. */
  async domainDestroy(input: DomainRef & { graceful?: boolean }): Promise<void> {
    const args = ['destroy', ...domainArg(input.name), ...(input.graceful ? ['--graceful'] : [])];
    await this.virsh(`destroy ${input.name}`, args);
  }

  /**
   * Graceful shutdown, then destroy if the guest is still up after `timeoutMs`. Idempotent: a domain that is
   * already off gives `already-off`.
   */
  async domainShutdownOrDestroy(
    input: DomainRef & { timeoutMs: number; pollIntervalMs?: number },
  ): Promise<{ outcome: ShutdownOutcome }> {
    try {
      await this.domainShutdown(input);
    } catch (err) {
      if (isInvalidState(err)) return { outcome: ShutdownOutcome.alreadyOff };
      throw err;
    }
    const deadline = Date.now() + input.timeoutMs;
    const poll = input.pollIntervalMs ?? DEFAULT_SHUTDOWN_POLL_MS;
    while (Date.now() < deadline) {
      if ((await this.domainGetState(input)) === DomainState.shutOff) return { outcome: ShutdownOutcome.shutdown };
      await sleep(Math.min(poll, Math.max(0, deadline - Date.now())));
    }
    try {
      await this.domainDestroy(input);
      return { outcome: ShutdownOutcome.destroyed };
    } catch (err) {
      // The guest finished shutting down between the last poll and the destroy.
      if (isInvalidState(err)) return { outcome: ShutdownOutcome.shutdown };
      throw err;
    }
  }

  async domainGetState(input: DomainRef): Promise<DomainState> {
    const out = await this.virsh(`domstate ${input.name}`, ['domstate', ...domainArg(input.name)]);
    return stateFromVirshWord(out.trim());
  }

  async domainUndefine(input: DomainRef & { flags?: readonly DomainUndefineFlag[] }): Promise<void> {
    const flags = (input.flags ?? []).map((flag) => {
      if (!Object.values(DomainUndefineFlag).includes(flag)) throw invalidArgument(`unknown undefine flag ${flag}`);
      return `--${flag}`;
    });
    await this.virsh(`undefine ${input.name}`, ['undefine', ...domainArg(input.name), ...flags]);
  }

  /** Asks the guest to reboot (ACPI); a guest without an OS ignores it. `domainReset` is the hard variant. */
  async domainReboot(input: DomainRef): Promise<void> {
    await this.virsh(`reboot ${input.name}`, ['reboot', ...domainArg(input.name)]);
  }

  async domainReset(input: DomainRef): Promise<void> {
    await this.virsh(`reset ${input.name}`, ['reset', ...domainArg(input.name)]);
  }

  async domainSuspend(input: DomainRef): Promise<void> {
    await this.virsh(`suspend ${input.name}`, ['suspend', ...domainArg(input.name)]);
  }

  async domainResume(input: DomainRef): Promise<void> {
    await this.virsh(`resume ${input.name}`, ['resume', ...domainArg(input.name)]);
  }

  /** All domains, active and inactive, optionally filtered by state. One virsh process, one connection. */
  async listAllDomains(input: { states?: readonly DomainState[] } = {}): Promise<DomainSummary[]> {
    const out = await this.virsh('list domains', ['list --all --uuid --name ; domstats --raw --state']);
    const uuids = new Map<string, string>();
    const states = new Map<string, DomainState>();
    let current: string | undefined;
    for (const line of out.split('\n')) {
      const listed = /^([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}) (.+)$/.exec(line);
      const header = /^Domain: '(.*)'$/.exec(line);
      const state = /^\s+state\.state=(\d+)$/.exec(line);
      if (listed) uuids.set(listed[2] as string, listed[1] as string);
      else if (header) current = header[1];
      else if (state && current !== undefined) states.set(current, stateFromNumber(Number(state[1])));
    }
    const domains: DomainSummary[] = [];
    // A domain undefined between the two commands appears in only one list; it no longer exists, so skip it.
    for (const [name, uuid] of uuids) {
      const state = states.get(name);
      if (state !== undefined && (input.states === undefined || input.states.includes(state))) {
        domains.push({ name, uuid, state });
      }
    }
    return domains.sort((a, b) => a.name.localeCompare(b.name));
  }

  async domainGetInfo(input: DomainRef): Promise<DomainInfo> {
    const args = [
      'domstats',
      '--raw',
      '--state',
      '--cpu-total',
      '--balloon',
      '--vcpu',
      ...domainArg(input.name, false),
    ];
    const fields = parseEqualsFields(await this.virsh(`info ${input.name}`, args));
    return {
      state: stateFromNumber(Number(fields['state.state'])),
      vcpus: Number(fields['vcpu.current'] ?? 0),
      maxMemoryKiB: Number(fields['balloon.maximum'] ?? 0),
      memoryKiB: Number(fields['balloon.current'] ?? fields['balloon.maximum'] ?? 0),
      cpuTimeNs: Number(fields['cpu.time'] ?? 0),
    };
  }

  /**
   * The current job (a migration, save, dump…) or, with `completed`, the last finished one. libvirt gives running
   * migration statistics only on the source, and keeps a finished migration's on the host the domain ended up on
   * (none after a post-copy migration that undefined the source). An aborted job leaves none of its own: `completed`
   * then gives the job before it, such as the incoming migration that brought the domain here.
   */
  async domainGetJobStats(input: DomainRef & { completed?: boolean }): Promise<DomainJobStats> {
    const args = ['domjobinfo', ...domainArg(input.name), '--rawstats', ...(input.completed ? ['--completed'] : [])];
    const stats = parseJobStats(await this.virsh(`jobinfo ${input.name}`, args));
    const running = stats.type === DomainJobType.bounded || stats.type === DomainJobType.unbounded;
    if (!running || stats.stats['operation'] !== DomainJobOperation.migrationOut) return stats;
    const reason = await this.virsh(`domstate ${input.name}`, ['domstate', ...domainArg(input.name), '--reason']);
    return { ...stats, postCopy: isPostCopyStateReason(reason) };
  }

  /**
   * virDomainMigrateToURI3, always live. Bounded by `timeoutMs` (not the per-call timeout); the signal aborts the
   * job. Rejects with LibvirtMigrationError (LibvirtMigrationAbortedError, LibvirtMigrationTimeoutError), or with
   * LibvirtNotFoundError / LibvirtConnectionLostError, after which the job's outcome must be looked up.
   */
  async domainMigrateToURI3(input: DomainMigrateInput): Promise<void> {
    await migrateToURI3(this.call, input);
  }

  /** QEMU's downtime-limit. Before a job it is the job's starting value; during one it takes effect at once. */
  async domainMigrateSetMaxDowntime(input: DomainRef & { downtimeMs: number }): Promise<void> {
    await this.virsh(`migrate-setmaxdowntime ${input.name}`, maxDowntimeArgs(input));
  }

  async domainMigrateGetMaxDowntime(input: DomainRef): Promise<number> {
    const out = await this.virsh(`migrate-getmaxdowntime ${input.name}`, [
      'migrate-getmaxdowntime',
      ...domainArg(input.name),
    ]);
    return Number(out.trim());
  }

  /** The running job's bandwidth cap, or the stored one for the next job. */
  async domainMigrateSetMaxSpeed(input: DomainRef & { bandwidthMiBps: number }): Promise<void> {
    await this.virsh(`migrate-setspeed ${input.name}`, maxSpeedArgs(input));
  }

  /** MiB/s; UNLIMITED_MIGRATION_BANDWIDTH_MIBPS when there is no cap. */
  async domainMigrateGetMaxSpeed(input: DomainRef): Promise<number> {
    const out = await this.virsh(`migrate-getspeed ${input.name}`, ['migrate-getspeed', ...domainArg(input.name)]);
    return Number(out.trim());
  }

  /** Switches a running migration started with `postCopy` to post-copy; without one, LibvirtInvalidStateError. */
  async domainMigrateStartPostCopy(input: DomainRef): Promise<void> {
    await this.virsh(`migrate-postcopy ${input.name}`, ['migrate-postcopy', ...domainArg(input.name)]);
  }

  /** Aborts the running job; with none, LibvirtInvalidStateError. A migration in post-copy cannot be aborted. */
  async domainAbortJob(input: DomainRef): Promise<void> {
    await this.virsh(`domjobabort ${input.name}`, abortJobArgs(input));
  }

  /** Starts libvirt's page-sampling dirty-rate calculation; `domainGetDirtyRate` reads the result. */
  async domainStartDirtyRateCalc(input: DomainRef & { seconds: number }): Promise<void> {
    await this.virsh(`domdirtyrate-calc ${input.name}`, dirtyRateCalcArgs(input));
  }

  async domainGetDirtyRate(input: DomainRef): Promise<DomainDirtyRate> {
    const args = ['domstats', '--raw', '--dirtyrate', ...domainArg(input.name, false)];
    return parseDirtyRate(await this.virsh(`dirtyrate ${input.name}`, args));
  }

  async nodeGetInfo(): Promise<NodeInfo> {
    const fields = parseColonFields(await this.virsh('nodeinfo', ['nodeinfo']));
    return {
      model: fields['CPU model'] ?? '',
      cpus: Number(fields['CPU(s)']),
      mhz: parseInt(fields['CPU frequency'] ?? '0', 10),
      numaNodes: Number(fields['NUMA cell(s)']),
      sockets: Number(fields['CPU socket(s)']),
      cores: Number(fields['Core(s) per socket']),
      threads: Number(fields['Thread(s) per core']),
      memoryKiB: parseInt(fields['Memory size'] ?? '0', 10),
    };
  }

  /** virNodeGetFreeMemory: free bytes summed over NUMA cells. */
  async nodeGetFreeMemory(): Promise<number> {
    const fields = parseColonFields(await this.virsh('freecell', ['freecell']));
    return parseInt(fields['Total'] ?? '0', 10) * 1024;
  }

  async nodeGetMemoryStats(): Promise<NodeMemoryStats> {
    const fields = parseColonFields(await this.virsh('nodememstats', ['nodememstats']));
    const kib = (key: string): number => parseInt(fields[key] ?? '0', 10);
    return { totalKiB: kib('total'), freeKiB: kib('free'), buffersKiB: kib('buffers'), cachedKiB: kib('cached') };
  }

  /**
   * Domain events of every type for every domain, from one long-running `virsh event --loop`. Await `ready`
   * before acting if the events of that action matter; `close()` ends the iteration.
   */
  domainEvents(): DomainEventStream {
    const command = this.runner.spawn({
      file: this.virshPath,
      // `echo` prints once virsh has connected, which is the earliest moment the stream can report readiness.
      // No `-q`: in quiet mode virsh drops the newline after each command's output.
      args: ['-c', this.uri, 'echo novacron-events-ready ; event --loop --all --timestamp'],
    });
    return new DomainEventStream(command, this.uri);
  }

  private readonly call: VirshCall = (operation, args, options) => this.virsh(operation, args, options);

  private async virsh(operation: string, args: readonly string[], options: Parameters<VirshCall>[2] = {}) {
    const timeoutMs = options.timeoutMs ?? this.commandTimeoutMs;
    const result = await this.runner.run({ file: this.virshPath, args: ['-c', this.uri, ...args], timeoutMs });
    if (result.timedOut) {
      throw new LibvirtError({
        message: `${operation}: virsh did not answer within ${timeoutMs} ms`,
        code: LibvirtErrorCode.commandTimeout,
        operation,
      });
    }
    if (result.exitCode !== 0) {
      throw (options.classify ?? LibvirtError.fromVirsh.bind(LibvirtError))({ stderr: result.stderr, operation });
    }
    return result.stdout;
  }
}

function domainNameFromXml(xml: string): string {
  let name: string | undefined;
  try {
    const nameElement = childElement(parseXml(xml), 'name');
    name = nameElement ? textContent(nameElement) : undefined;
  } catch (err) {
    throw new LibvirtError({
      message: `domain XML does not parse: ${(err as Error).message}`,
      code: LibvirtErrorCode.xmlError,
      operation: 'define',
      cause: err,
    });
  }
  if (name === undefined) throw invalidArgument('domain XML has no <name>');
  domainArg(name);
  return name;
}
