/**
 * Live migration benchmark, on the migration integration test's set-up (test/support/fleet.ts, two harness hosts,
 * the test guest on the shared pool) with networked hosts whose agents run in their hosts' namespaces: libvirt's
 * plain live migration against NovaCron's migrateVm with the parameters its plan chooses, for an idle and a
 * memory-busy guest, over uncapped veth pairs and over 100 Mbit/s links, side by side in one run on one guest per
 * load. It also sets the plan's predictions against what libvirt measured, and the workflow's time against the job's.
 *
 *   NOVACRON_BENCH_MIGRATION_REPS=4 NOVACRON_BENCH_MIGRATION_DIRTY_MIBPS=50 npm run bench -- migration
 *
 * NOVACRON_BENCH_MIGRATION_CASES=busy:tbf-100mbit,idle:veth runs only those cases, into migration-partial.json,
 * and leaves the docs as they are. The agents run with the shipped config, whose datacenter profile pins
 * dwcp.mode to datacenter; NOVACRON_BENCH_MIGRATION_DWCP_MODE=auto lets the link probe choose the mode instead.
 */
import path from 'node:path';
import { migrationPolicySchema } from '../../domain/migration';
import { migrationDeadlineMs } from '../../domain/migration-plan';
import { detectDomainType } from '../../native/libvirt';
import { migrate } from '../../store/migrate';
import { createPool } from '../../store/pool';
import { startFleet, TEST_FLEET_OVERRIDES, type Fleet } from '../../test/support/fleet';
import { registerTestGuest } from '../../test/support/test-guest-library';
import { readResults, writeResults, type Benchmark, type BenchRunInput } from '../results';
import { withBenchServices } from '../services';
import { deleteGuest, guestState, replaceGuest, startGuest, type BenchGuest } from './guest';
import { dirtyRate, domainHost, migrateWithDefaults, migrateWithNovacron, storeHost, type BenchVm } from './measure';
import {
  renderMigration,
  totalOf,
  type GuestLoad,
  type LinkKind,
  type MeasuredSample,
  type MigrationCaseResult,
  type MigrationResults,
  type MigrationSample,
} from './render';

const HOSTS = ['host-1', 'host-2'];
const REPS = Number(process.env.NOVACRON_BENCH_MIGRATION_REPS ?? 4);
const DIRTY_MIBPS: Record<GuestLoad, number> = {
  idle: 0,
  busy: Number(process.env.NOVACRON_BENCH_MIGRATION_DIRTY_MIBPS ?? 50),
};
const GUEST = { vcpus: 1, memoryMib: 256, workingSetMiB: 64 };
const LINK_CAP_MBIT = 100;
const DWCP_MODE = process.env.NOVACRON_BENCH_MIGRATION_DWCP_MODE;
const ALL_CASES: Array<{ guest: GuestLoad; link: LinkKind }> = [
  { guest: 'idle', link: 'veth' },
  { guest: 'idle', link: 'tbf-100mbit' },
  { guest: 'busy', link: 'veth' },
  { guest: 'busy', link: 'tbf-100mbit' },
];
const DEADLINE_MS = migrationDeadlineMs({
  memoryBytes: GUEST.memoryMib * 1024 * 1024,
  deadlineSecondsPerGiB: migrationPolicySchema.parse({}).deadlineSecondsPerGiB,
});

const log = (line: string): void => {
  process.stdout.write(`  ${line}\n`);
};
const other = (hostId: string): string => HOSTS.find((h) => h !== hostId)!;

function chosenCases(): { cases: typeof ALL_CASES; partial: boolean } {
  const filter = process.env.NOVACRON_BENCH_MIGRATION_CASES;
  if (!filter) return { cases: ALL_CASES, partial: false };
  const names = filter.split(',').map((s) => s.trim());
  const cases = ALL_CASES.filter((c) => names.includes(`${c.guest}:${c.link}`));
  if (cases.length !== names.length) {
    throw new Error(
      `NOVACRON_BENCH_MIGRATION_CASES: expected ${ALL_CASES.map((c) => `${c.guest}:${c.link}`).join(', ')}`,
    );
  }
  return { cases, partial: true };
}

function describe(sample: MeasuredSample): string {
  const figures =
    sample.outcome === 'completed'
      ? `total ${totalOf(sample)} ms, job ${sample.libvirtTotalMs} ms, downtime ${sample.downtimeMs} ms, ` +
        `${Math.round((sample.bytes ?? 0) / 2 ** 20)} MiB, ${sample.passes} passes` +
        (sample.overheadMs !== undefined ? `, overhead ${sample.overheadMs} ms` : '') +
        (sample.plan
          ? `, predicted ${sample.plan.prediction.totalMs} ms / ${sample.plan.prediction.downtimeMs} ms`
          : '')
      : `${sample.outcome} after ${sample.wallMs} ms: ${sample.reason ?? ''}`;
  return `${sample.method} ${sample.from} → ${sample.to}: ${figures}`;
}

/** The guest where the store says it is, or the benchmark measured something other than it meant to. */
async function assertConsistent(fleet: Fleet, vm: BenchVm): Promise<string> {
  const [actual, recorded] = await Promise.all([domainHost(fleet, vm), storeHost(fleet, vm)]);
  if (actual !== recorded) throw new Error(`${vm.name} runs on ${actual} but the store names ${recorded}`);
  return actual;
}

/**
 * `REPS` migrations per method, interleaved in blocks of two: libvirt's defaults there and (if it went) back, so the
 * guest is where NovaCron's store has it before NovaCron moves it there and back. After each one the guest must
 * show its heartbeat; a dead one is recorded on the sample and replaced before the next.
 */
async function runCase(fleet: Fleet, guest: BenchGuest, link: LinkKind): Promise<MigrationSample[]> {
  const samples: MigrationSample[] = [];
  const count = (method: MigrationSample['method']) => samples.filter((s) => s.method === method).length;
  const record = async (sample: MeasuredSample): Promise<boolean> => {
    const state = await guestState(fleet, guest.vm);
    samples.push({ ...sample, guestSurvived: state.alive, ...(state.alive ? {} : { guestFailure: state.detail }) });
    log(`${describe(sample)}${state.alive ? '' : `; the guest died: ${state.detail}`}`);
    if (!state.alive) await replaceGuest(fleet, guest, DEADLINE_MS);
    return state.alive;
  };
  while (count('libvirt-defaults') < REPS || count('novacron') < REPS) {
    if (count('libvirt-defaults') < REPS) {
      const home = await assertConsistent(fleet, guest.vm);
      const there = { from: home, to: other(home), ownerHostId: home, deadlineMs: DEADLINE_MS };
      const out = await migrateWithDefaults(fleet, guest.vm, there);
      if ((await record(out)) && out.outcome === 'completed') {
        const back = { from: other(home), to: home, ownerHostId: home, deadlineMs: DEADLINE_MS };
        const returned = await migrateWithDefaults(fleet, guest.vm, back);
        await record(returned);
        // Stranded where the store does not have it: brought home over the uncapped link, unmeasured.
        if (returned.outcome !== 'completed' && (await domainHost(fleet, guest.vm)) !== home) {
          await setLinks(fleet, 'veth');
          const rescue = await migrateWithDefaults(fleet, guest.vm, back);
          if (rescue.outcome !== 'completed')
            throw new Error(`${guest.vm.name} could not be brought home: ${rescue.reason}`);
          await setLinks(fleet, link);
        }
      }
    }
    for (let i = 0; i < 2 && count('novacron') < REPS; i++) {
      const to = other(await assertConsistent(fleet, guest.vm));
      await record(await migrateWithNovacron(fleet, guest.vm, { to }));
    }
  }
  await assertConsistent(fleet, guest.vm);
  return samples;
}

async function setLinks(fleet: Fleet, link: LinkKind): Promise<void> {
  const cap = link === 'veth' ? undefined : { rateMbit: LINK_CAP_MBIT };
  for (const host of fleet.hypervisors.hosts) await host.setLinkCap(cap);
}

async function run(input: BenchRunInput): Promise<{ file: string; publish: boolean }> {
  const { cases: chosen, partial } = chosenCases();
  return withBenchServices(
    {
      name: 'migration',
      overrides: { ...TEST_FLEET_OVERRIDES, migration: { pollIntervalMs: 250 } },
      controlWorker: false,
    },
    async ({ config, cleanups, scratchDir }) => {
      const pool = createPool({ databaseUrl: config.storage.databaseUrl!, applicationName: 'novacron-bench', max: 5 });
      cleanups.add(() => pool.end());
      await migrate(pool);
      const fleet = await startFleet({
        config,
        pool,
        hostIds: HOSTS,
        scratchDir,
        network: true,
        ...(DWCP_MODE ? { agentEnv: { NOVACRON_DWCP_MODE: DWCP_MODE } } : {}),
      });
      cleanups.add(() => fleet.stop());
      await registerTestGuest(fleet, { log });
      const cases: MigrationCaseResult[] = [];
      for (const load of ['idle', 'busy'] as const) {
        const links = chosen.filter((c) => c.guest === load).map((c) => c.link);
        if (links.length === 0) continue;
        const guest = await startGuest(fleet, { load, dirtyMiBps: DIRTY_MIBPS[load], spec: GUEST });
        for (const link of links) {
          await setLinks(fleet, link);
          const rate = await dirtyRate(fleet, guest.vm, await domainHost(fleet, guest.vm));
          log(`${load} guest, ${link}: dirty rate ${(rate / 2 ** 20).toFixed(1)} MiB/s`);
          const samples = await runCase(fleet, guest, link);
          cases.push({ guest: load, link, dirtyRateBytesPerSecond: rate, samples });
        }
        await setLinks(fleet, 'veth');
        await deleteGuest(fleet, guest, DEADLINE_MS);
      }
      const results: Omit<MigrationResults, 'run'> = {
        benchmark: 'migration',
        domainType: detectDomainType(),
        guest: { ...GUEST, dirtyMiBps: DIRTY_MIBPS },
        repetitions: REPS,
        linkCapMbit: LINK_CAP_MBIT,
        deadlineMs: DEADLINE_MS,
        agentsInHostNamespaces: true,
        agentDwcpMode: DWCP_MODE ?? 'profile',
        cases,
      };
      const name = partial ? 'migration-partial.json' : 'migration.json';
      const file = await writeResults({ dir: input.outDir, name, recorder: input.recorder, results });
      return { file, publish: !partial };
    },
  );
}

export const migrationBenchmark: Benchmark = {
  name: 'migration',
  run,
  publishedResults: async (outDir) => path.join(outDir, 'migration.json'),
  sections: [
    {
      doc: 'docs/benchmarks.md',
      name: 'migration',
      render: async (file) => renderMigration(file, await readResults<MigrationResults>(file)),
    },
  ],
};
