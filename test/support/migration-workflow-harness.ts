/**
 * Test support for the migrateVm workflow tests: mocked control and host activities on the real Temporal server, a
 * control queue and one queue per host. The two host mocks share one simulated pair of hypervisors, so the saga's
 * look at both hosts after an abort or a cancel sees what the job left, and a test reads where the VM ended from
 * the same simulation.
 */
import { Client, Connection, WorkflowFailedError, type WorkflowHandle } from '@temporalio/client';
import { ApplicationFailure, CancelledFailure } from '@temporalio/common';
import { heartbeat, sleep } from '@temporalio/activity';
import { NativeConnection, Worker, type WorkflowBundleWithSourceMap } from '@temporalio/worker';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import type { LinkProbeReport } from '../../activities/image-activities';
import type { MigrationActivities, MigrationDomainPresence } from '../../activities/migration-activities';
import type { MigrationControlActivities, MigrationOpening } from '../../activities/migration-control-activities';
import type { MigrateVmInput, MigrationJobSample, MigrationPolicyInput } from '../../domain/migration';
import type { migrateVm } from '../../workflows/migrate-vm';
import { loadWorkflowBundle } from '../../workers/workflow-bundle';
import { testTemporalAddress } from './services';

export interface WorkflowTestEnv {
  bundle: WorkflowBundleWithSourceMap;
  client: Client;
  nativeConnection: NativeConnection;
  close(): Promise<void>;
}

export async function connectWorkflowTestEnv(): Promise<WorkflowTestEnv> {
  const bundle = await loadWorkflowBundle();
  const connection = await Connection.connect({ address: testTemporalAddress() });
  const nativeConnection = await NativeConnection.connect({ address: testTemporalAddress() });
  return {
    bundle,
    client: new Client({ connection }),
    nativeConnection,
    async close() {
      await connection.close();
      await nativeConnection.close();
    },
  };
}

export const MiB = 1024 * 1024;
export const VM_ID = '6f1c2d4e-0000-4000-8000-000000000001';

export type Calls = Array<[string, unknown]>;
type DomainState = 'running' | 'paused' | 'shutoff' | 'absent';

/** Two hypervisors and the job between them, as the mocks on both host queues see them. */
export interface Sim {
  source: DomainState;
  target: DomainState;
  jobRunning: boolean;
  /** The test (or a mock) lets the running job finish. */
  finish: boolean;
  abortRequested: boolean;
  /** The job completes even when it is aborted or its activity is cancelled. */
  finishDespiteAbort: boolean;
  samples: number;
}

export interface Scenario {
  calls: Calls;
  sim: Sim;
  policy?: MigrationPolicyInput;
  probeMbps?: number;
  /** The n-th sample (1-based) of the running job; the default falls steadily. */
  sample?: (n: number, sim: Sim) => MigrationJobSample;
  /** Sample count after which the job finishes by itself. */
  finishAfterSamples?: number;
  control?: Partial<MigrationControlActivities>;
  source?: Partial<MigrationActivities>;
}

export function newSim(): Sim {
  return {
    source: 'running',
    target: 'absent',
    jobRunning: false,
    finish: false,
    abortRequested: false,
    finishDespiteAbort: false,
    samples: 0,
  };
}

export function runningSample(n: number, fields: Partial<MigrationJobSample> = {}): MigrationJobSample {
  return {
    state: 'running',
    phase: 'precopy',
    timeElapsedMs: n * 100,
    dataTotalBytes: 256 * MiB,
    dataProcessedBytes: n * 40 * MiB,
    dataRemainingBytes: Math.max(1, 256 - n * 40) * MiB,
    memoryDirtyRateBytesPerSecond: MiB,
    pass: 1,
    memoryBytesPerSecond: 400 * MiB,
    ...fields,
  };
}

export const COMPLETED: MigrationJobSample = {
  ...runningSample(5),
  state: 'completed',
  timeElapsedMs: 480,
  dataProcessedBytes: 270 * MiB,
  dataRemainingBytes: 0,
  pass: 3,
  downtimeMs: 21,
};

function presence(hostId: string, state: DomainState, completed: boolean): MigrationDomainPresence {
  return {
    hostId,
    state,
    active: state === 'running' || state === 'paused',
    foreign: false,
    jobActive: false,
    ...(completed && state === 'running' ? { completedJob: COMPLETED } : {}),
  };
}

export interface MigrationHarness {
  taskQueue: string;
  source: string;
  target: string;
  /** A new control worker, which runs the workflow; several in turn are a control plane that restarted. */
  controlWorker(): Promise<Worker>;
  /** Runs `work` while both host agents poll. */
  withHosts<T>(work: () => Promise<T>): Promise<T>;
  start(input?: Partial<MigrateVmInput>): Promise<WorkflowHandle<typeof migrateVm>>;
}

export async function migrationHarness(env: WorkflowTestEnv, scenario: Scenario): Promise<MigrationHarness> {
  const suffix = randomBytes(4).toString('hex');
  const taskQueue = `migrate-wf-test-${suffix}`;
  const source = `src-${suffix}`;
  const target = `dst-${suffix}`;
  const { calls, sim } = scenario;
  const record =
    <R>(name: string, result: R) =>
    async (arg: unknown): Promise<R> => {
      calls.push([name, arg]);
      return result;
    };
  const opening: MigrationOpening = {
    vm: { id: VM_ID, name: 'web-1', memoryMib: 256, storagePool: 'nfs' },
    sourceHostId: source,
    settings: { pollIntervalMs: 100, dirtyRateSeconds: 1 },
  };
  const probe: LinkProbeReport = {
    sourceHostId: source,
    targetHostId: target,
    rttMs: 0.3,
    bandwidthMbps: scenario.probeMbps ?? 9000,
    probeBytes: 1e8,
    streams: 2,
    mode: 'datacenter',
  };
  const control: Partial<MigrationControlActivities> & { recordLinkProbe: unknown } = {
    openMigration: record('openMigration', opening),
    chooseMigrationTarget: record('chooseMigrationTarget', {
      target: {
        id: target,
        libvirtUri: `qemu+unix:///system?socket=/run/${target}/libvirt-sock`,
        migrationAddress: '127.0.0.1',
        dwcpEndpoint: '127.0.0.1:7002',
      },
      sourceSpareCpus: 2,
    }),
    recordLinkProbe: record('recordLinkProbe', { id: 1 }),
    recordMigrationPlan: record('recordMigrationPlan', undefined),
    lockVmForMigration: record('lockVmForMigration', { generation: 7 }),
    acquireMigrationSlot: record('acquireMigrationSlot', { acquired: true, waitingBehind: 0 }),
    updateMigrationProgress: record('updateMigrationProgress', undefined),
    recordMigrationEscalation: record('recordMigrationEscalation', undefined),
    commitMigration: record('commitMigration', { generation: 8, ownerToken: 3 }),
    releaseMigration: record('releaseMigration', undefined),
    finishMigration: record('finishMigration', undefined),
    ...scenario.control,
  };
  const inspect =
    (hostId: string, side: 'source' | 'target') =>
    async (arg: { completedJob?: boolean }): Promise<MigrationDomainPresence> => {
      calls.push([`inspect:${side}`, arg]);
      return {
        ...presence(hostId, sim[side], arg.completedJob ?? false),
        jobActive: side === 'source' && sim.jobRunning,
      };
    };
  const sourceActivities: Partial<MigrationActivities> & { probeLink: unknown } = {
    probeLink: record('probeLink', probe),
    measureDirtyRate: record('measureDirtyRate', { bytesPerSecond: MiB, periodSeconds: 1 }),
    describeMigrationSource: record('describeMigrationSource', {
      hostId: source,
      state: 'running',
      disks: [{ target: 'vda', path: '/pools/nfs/vm/root.qcow2', backingPaths: ['/pools/nfs/library/debian.raw'] }],
    }),
    async migrateDomain(arg) {
      calls.push(['migrateDomain', arg]);
      sim.jobRunning = true;
      try {
        for (;;) {
          heartbeat({ state: 'running' });
          if (sim.finish || (sim.abortRequested && sim.finishDespiteAbort)) {
            Object.assign(sim, { source: 'absent', target: 'running' });
            return { jobMs: 450, resumed: false };
          }
          if (sim.abortRequested) {
            throw ApplicationFailure.nonRetryable(
              'operation aborted: migration out: canceled by client',
              'MigrationJobAborted',
            );
          }
          await sleep(20);
        }
      } catch (err) {
        if (err instanceof CancelledFailure) {
          calls.push(['migrateDomain:cancelled', undefined]);
          if (sim.finishDespiteAbort) Object.assign(sim, { source: 'absent', target: 'running' });
        }
        throw err;
      } finally {
        sim.jobRunning = false;
      }
    },
    async sampleMigrationJob() {
      if (!sim.jobRunning) return { ...runningSample(0), state: 'none' };
      sim.samples++;
      calls.push(['sampleMigrationJob', sim.samples]);
      if (scenario.finishAfterSamples !== undefined && sim.samples >= scenario.finishAfterSamples) sim.finish = true;
      return (scenario.sample ?? runningSample)(sim.samples, sim);
    },
    setMigrationDowntime: record('setMigrationDowntime', { applied: true }),
    async startMigrationPostCopy(arg) {
      calls.push(['startMigrationPostCopy', arg]);
      sim.finish = true;
      return { applied: true };
    },
    async abortMigrationJob(arg) {
      calls.push(['abortMigrationJob', arg]);
      sim.abortRequested = true;
      return { aborted: sim.jobRunning };
    },
    inspectMigrationDomain: inspect(source, 'source'),
    async resumeMigrationSource(arg) {
      calls.push(['resumeMigrationSource', arg]);
      const action = sim.source === 'paused' ? 'resumed' : 'none';
      sim.source = 'running';
      return { action };
    },
    cleanupMigrationSource: record('cleanupMigrationSource', { undefined: false }),
    ...scenario.source,
  };
  const targetActivities: Partial<MigrationActivities> = {
    prepareMigrationTarget: record('prepareMigrationTarget', {
      hostId: target,
      checked: [],
      consoleLogPath: `/var/lib/${target}/consoles/${VM_ID}.log`,
    }),
    inspectMigrationDomain: inspect(target, 'target'),
    async discardMigrationTarget(arg) {
      calls.push(['discardMigrationTarget', arg]);
      sim.target = 'absent';
      return { removed: true };
    },
  };
  const hostWorker = (hostId: string, activities: object) =>
    Worker.create({
      connection: env.nativeConnection,
      taskQueue: `host-${hostId}`,
      activities,
      maxHeartbeatThrottleInterval: '100 milliseconds',
    });
  const [sourceWorker, targetWorker] = await Promise.all([
    hostWorker(source, sourceActivities),
    hostWorker(target, targetActivities),
  ]);
  return {
    taskQueue,
    source,
    target,
    controlWorker: () =>
      Worker.create({ connection: env.nativeConnection, taskQueue, workflowBundle: env.bundle, activities: control }),
    withHosts: (work) => targetWorker.runUntil(sourceWorker.runUntil(work())),
    start: (input = {}) =>
      env.client.workflow.start<typeof migrateVm>('migrateVm', {
        taskQueue,
        workflowId: `migrate-${VM_ID}-${randomBytes(4).toString('hex')}`,
        args: [{ vmId: VM_ID, ...input }],
      }),
  };
}

/** One control worker and both host agents, for as long as `run` runs. */
export async function withMigrationWorkers<T>(
  env: WorkflowTestEnv,
  scenario: Scenario,
  run: (harness: MigrationHarness) => Promise<T>,
): Promise<T> {
  const harness = await migrationHarness(env, scenario);
  const worker = await harness.controlWorker();
  return harness.withHosts(() => worker.runUntil(run(harness)));
}

export const names = (calls: Calls) => calls.map(([name]) => name);
export const argsOf = <T>(calls: Calls, name: string): T[] => calls.filter(([n]) => n === name).map(([, a]) => a as T);

export function failureOf(err: unknown): ApplicationFailure {
  let cause = err instanceof WorkflowFailedError ? err.cause : err;
  while (cause instanceof Error && !(cause instanceof ApplicationFailure) && cause.cause) cause = cause.cause;
  assert.ok(cause instanceof ApplicationFailure, `expected an ApplicationFailure, got ${String(cause)}`);
  return cause;
}
