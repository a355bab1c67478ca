import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { test } from 'node:test';

import type { CommandResult, CommandRunner, RunInput } from './command-runner';
import { migrateArgs } from './domain-migration';
import {
  LibvirtConnectionLostError,
  LibvirtErrorCode,
  LibvirtInvalidStateError,
  LibvirtMigrationAbortedError,
  LibvirtMigrationError,
  LibvirtMigrationTimeoutError,
  LibvirtNotFoundError,
  isMigrationAborted,
  isMigrationError,
} from './errors';
import { LibvirtConnection } from './libvirt-connection';
import { DomainJobType, UNLIMITED_MIGRATION_BANDWIDTH_MIBPS } from './libvirt-types';

const URI = 'qemu:///system?socket=/tmp/hv/host-1/sock/libvirt-sock';
const DEST = 'qemu:///system?socket=/tmp/hv/host-2/sock/libvirt-sock';
const ABORTED = "error: operation aborted: job 'migration out' canceled by client\n";
const NO_JOB = 'error: Requested operation is not valid: no job is active on the domain\n';

type Handler = (input: RunInput) => Partial<CommandResult> | Promise<Partial<CommandResult>>;

/** Answers each virsh subcommand from a handler; records calls in order, and what files they named held. */
function fakeVirsh(handlers: Record<string, Handler>) {
  const calls: Array<{ command: string; args: readonly string[]; timeoutMs?: number }> = [];
  const files = new Map<string, string>();
  const runner: CommandRunner = {
    run: async (input) => {
      assert.deepEqual(input.args.slice(0, 2), ['-c', URI]);
      const command = input.args[2] ?? '';
      calls.push({ command, args: input.args.slice(3), ...(input.timeoutMs ? { timeoutMs: input.timeoutMs } : {}) });
      for (const flag of ['--xml', '--persistent-xml']) {
        const at = input.args.indexOf(flag);
        if (at >= 0) files.set(flag, readFileSync(input.args[at + 1] as string, 'utf8'));
      }
      const handler = handlers[command];
      if (!handler) throw new Error(`unexpected virsh ${command}`);
      return { exitCode: 0, signal: null, stdout: '', stderr: '', timedOut: false, ...(await handler(input)) };
    },
    spawn: () => assert.fail('no events here'),
  };
  return { conn: new LibvirtConnection({ uri: URI, runner, commandTimeoutMs: 5_000 }), calls, files };
}

/** A `virsh migrate` that runs until domjobabort (or `finish`) ends it. */
function pendingMigration() {
  let finish!: (result: Partial<CommandResult>) => void;
  const done = new Promise<Partial<CommandResult>>((resolve) => (finish = resolve));
  return { handler: () => done, finish };
}

test('migrateArgs: live always, persist and undefine by default, every tuning as virsh spells it', () => {
  assert.deepEqual(migrateArgs({ name: 'web-1', destUri: DEST, timeoutMs: 1000 }, {}), [
    'migrate',
    '--domain',
    'web-1',
    '--desturi',
    DEST,
    '--live',
    '--persistent',
    '--undefinesource',
  ]);
  const all = migrateArgs(
    {
      name: 'web-1',
      destUri: 'qemu+tcp://10.0.0.2/system',
      p2p: true,
      migrateUri: 'tcp://10.0.0.2:49152',
      listenAddress: '10.0.0.2',
      persistDest: false,
      undefineSource: false,
      unsafe: true,
      parallelConnections: 4,
      compressionMethods: ['xbzrle', 'mt'],
      bandwidthMiBps: 100,
      autoConverge: { initialPercent: 30, incrementPercent: 20 },
      postCopy: true,
      timeoutMs: 1000,
    },
    { destXml: '/tmp/d.xml', persistentXml: '/tmp/p.xml' },
  );
  assert.deepEqual(all.slice(6), [
    '--p2p',
    '--unsafe',
    '--migrateuri',
    'tcp://10.0.0.2:49152',
    '--listen-address',
    '10.0.0.2',
    '--parallel',
    '--parallel-connections',
    '4',
    '--comp-methods',
    'xbzrle,mt',
    '--bandwidth',
    '100',
    '--auto-converge',
    '--auto-converge-initial',
    '30',
    '--auto-converge-increment',
    '20',
    '--postcopy',
    '--xml',
    '/tmp/d.xml',
    '--persistent-xml',
    '/tmp/p.xml',
  ]);
  // One connection is the classic single stream, not multifd with one channel.
  const single = migrateArgs(
    { name: 'a', destUri: DEST, parallelConnections: 1, autoConverge: true, timeoutMs: 1 },
    {},
  );
  assert.ok(!single.includes('--parallel'));
  assert.deepEqual(single.slice(-1), ['--auto-converge']);
});

test('max downtime is set before the job starts, and the job gets the migration deadline, not the call timeout', async () => {
  const { conn, calls, files } = fakeVirsh({ 'migrate-setmaxdowntime': () => ({}), migrate: () => ({}) });
  await conn.domainMigrateToURI3({
    name: 'web-1',
    destUri: DEST,
    maxDowntimeMs: 500,
    destXml: '<domain>dest</domain>',
    persistentXml: '<domain>persistent</domain>',
    timeoutMs: 600_000,
  });
  assert.deepEqual(
    calls.map((c) => c.command),
    ['migrate-setmaxdowntime', 'migrate'],
  );
  assert.deepEqual(calls[0]?.args, ['--domain', 'web-1', '--downtime', '500']);
  assert.ok((calls[1]?.timeoutMs ?? 0) > 600_000, 'the job runs past the 5 s per-call timeout, up to its deadline');
  assert.equal(files.get('--xml'), '<domain>dest</domain>');
  assert.equal(files.get('--persistent-xml'), '<domain>persistent</domain>');
  const xmlFile = calls[1]?.args[calls[1].args.indexOf('--xml') + 1] as string;
  assert.ok(!existsSync(xmlFile), 'the XML files are removed afterwards');
});

test('an abort signal runs domjobabort, retrying while libvirt has no job yet, and rejects as aborted', async () => {
  const migration = pendingMigration();
  let aborts = 0;
  const { conn, calls } = fakeVirsh({
    migrate: migration.handler,
    domjobabort: () => {
      aborts += 1;
      if (aborts === 1) return { exitCode: 1, stderr: NO_JOB };
      migration.finish({ exitCode: 1, stderr: ABORTED });
      return {};
    },
  });
  const controller = new AbortController();
  const job = conn.domainMigrateToURI3({ name: 'web-1', destUri: DEST, timeoutMs: 60_000, signal: controller.signal });
  await new Promise((resolve) => setImmediate(resolve));
  controller.abort();
  await assert.rejects(job, (err: unknown) => {
    assert.ok(err instanceof LibvirtMigrationAbortedError && isMigrationAborted(err) && isMigrationError(err));
    assert.equal(err.code, LibvirtErrorCode.operationAborted);
    assert.match(err.message, /canceled by client/);
    return true;
  });
  assert.equal(aborts, 2);
  assert.deepEqual(calls.at(-1)?.args, ['--domain', 'web-1']);
});

test('an already aborted signal starts nothing', async () => {
  const { conn, calls } = fakeVirsh({});
  const signal = AbortSignal.abort();
  await assert.rejects(
    conn.domainMigrateToURI3({ name: 'web-1', destUri: DEST, timeoutMs: 1000, signal }),
    LibvirtMigrationAbortedError,
  );
  assert.equal(calls.length, 0);
});

test('a job that completes although the abort came too late resolves: the guest is on the target', async () => {
  const migration = pendingMigration();
  const { conn } = fakeVirsh({
    migrate: migration.handler,
    domjobabort: () => {
      migration.finish({});
      return { exitCode: 1, stderr: NO_JOB };
    },
  });
  const controller = new AbortController();
  const job = conn.domainMigrateToURI3({ name: 'web-1', destUri: DEST, timeoutMs: 60_000, signal: controller.signal });
  await new Promise((resolve) => setImmediate(resolve));
  controller.abort();
  await job;
});

test('past its deadline the job is aborted and rejects with LibvirtMigrationTimeoutError', async () => {
  const migration = pendingMigration();
  const { conn } = fakeVirsh({
    migrate: migration.handler,
    domjobabort: () => {
      migration.finish({ exitCode: 1, stderr: ABORTED });
      return {};
    },
  });
  await assert.rejects(conn.domainMigrateToURI3({ name: 'web-1', destUri: DEST, timeoutMs: 20 }), (err: unknown) => {
    assert.ok(err instanceof LibvirtMigrationTimeoutError && isMigrationError(err));
    assert.match(err.message, /not finished within 20 ms, aborted/);
    return true;
  });
});

test('a deadline past what a Node timer holds is capped, not fired at once', async () => {
  const migration = pendingMigration();
  const { conn, calls } = fakeVirsh({ migrate: migration.handler, domjobabort: () => assert.fail('no abort') });
  // 1 TiB at 3600 s per GiB, the policy's most generous: about 43 days.
  const job = conn.domainMigrateToURI3({ name: 'web-1', destUri: DEST, timeoutMs: 1024 * 3600 * 1000 });
  await new Promise((resolve) => setTimeout(resolve, 50));
  assert.equal(calls.at(-1)?.command, 'migrate', 'still migrating');
  assert.ok((calls.at(-1)?.timeoutMs ?? Infinity) <= 2_147_483_647, 'the virsh call has a timeout a timer can hold');
  migration.finish({});
  await job;
});

test('an abort libvirt refuses (post-copy) lets the job finish, and says so when it then fails', async () => {
  const migration = pendingMigration();
  const { conn } = fakeVirsh({
    migrate: migration.handler,
    domjobabort: () => {
      setTimeout(
        () => migration.finish({ exitCode: 1, stderr: 'error: internal error: qemu unexpectedly closed\n' }),
        5,
      );
      return {
        exitCode: 1,
        stderr: 'error: Requested operation is not valid: cannot abort migration in post-copy mode\n',
      };
    },
  });
  const controller = new AbortController();
  const job = conn.domainMigrateToURI3({ name: 'web-1', destUri: DEST, timeoutMs: 60_000, signal: controller.signal });
  await new Promise((resolve) => setImmediate(resolve));
  controller.abort();
  await assert.rejects(job, (err: unknown) => {
    assert.ok(err instanceof LibvirtMigrationAbortedError);
    assert.match(err.message, /abort was refused: .*post-copy mode.*qemu unexpectedly closed/);
    return true;
  });
});

test('failed migrations map to typed errors with libvirt’s message', async () => {
  const cases: Array<[string, new (...args: never[]) => Error, string]> = [
    [
      'error: Unsafe migration: Migration without shared storage is unsafe\n',
      LibvirtMigrationError,
      LibvirtErrorCode.migrateUnsafe,
    ],
    [
      "error: invalid argument: Unsupported compression method 'zstd'\n",
      LibvirtMigrationError,
      LibvirtErrorCode.invalidArg,
    ],
    [
      'error: internal error: Attempt to migrate guest to the same host 1b1c…\n',
      LibvirtMigrationError,
      LibvirtErrorCode.internalError,
    ],
    [ABORTED, LibvirtMigrationAbortedError, LibvirtErrorCode.operationAborted],
    ["error: failed to get domain 'web-1'\n", LibvirtNotFoundError, LibvirtErrorCode.noDomain],
    ['error: Cannot recv data: Connection reset by peer\n', LibvirtConnectionLostError, LibvirtErrorCode.unknown],
  ];
  for (const [stderr, type, code] of cases) {
    const { conn } = fakeVirsh({ migrate: () => ({ exitCode: 1, stderr }) });
    await assert.rejects(
      conn.domainMigrateToURI3({ name: 'web-1', destUri: DEST, timeoutMs: 1000 }),
      (err: unknown) => {
        assert.ok(err instanceof type, `${stderr} → ${(err as Error).name}`);
        assert.equal((err as LibvirtMigrationError).code, code);
        assert.ok(err.message.startsWith('migrate web-1: '));
        return true;
      },
    );
  }
});

test('bad input is refused before virsh runs', async () => {
  const { conn, calls } = fakeVirsh({});
  const bad = [
    { name: '-x', destUri: DEST },
    { name: 'a', destUri: '--p2p' },
    { name: 'a', destUri: DEST, migrateUri: 'tcp://x y' },
    { name: 'a', destUri: DEST, parallelConnections: 0 },
    { name: 'a', destUri: DEST, bandwidthMiBps: 1.5 },
    { name: 'a', destUri: DEST, maxDowntimeMs: 0 },
    { name: 'a', destUri: DEST, compressionMethods: ['zstd,mt'] },
    { name: 'a', destUri: DEST, autoConverge: { initialPercent: 100 } },
  ];
  for (const input of bad) {
    await assert.rejects(conn.domainMigrateToURI3({ timeoutMs: 1000, ...input }), (err: unknown) => {
      assert.equal((err as LibvirtMigrationError).code, LibvirtErrorCode.invalidArg, JSON.stringify(input));
      return true;
    });
  }
  await assert.rejects(conn.domainMigrateToURI3({ name: 'a', destUri: DEST, timeoutMs: 0 }), /timeoutMs/);
  assert.equal(calls.length, 0);
});

test('steering calls: downtime, speed, post-copy, abort, dirty rate', async () => {
  const { conn, calls } = fakeVirsh({
    'migrate-setmaxdowntime': () => ({}),
    'migrate-getmaxdowntime': () => ({ stdout: '2000\n\n' }),
    'migrate-setspeed': () => ({}),
    'migrate-getspeed': () => ({ stdout: `${UNLIMITED_MIGRATION_BANDWIDTH_MIBPS}\n\n` }),
    'migrate-postcopy': () => ({
      exitCode: 1,
      stderr:
        'error: Requested operation is not valid: post-copy can only be started while outgoing migration is in progress\n',
    }),
    domjobabort: () => ({ exitCode: 1, stderr: NO_JOB }),
    'domdirtyrate-calc': () => ({ stdout: "Start to calculate domain's memory dirty rate successfully.\n" }),
    domstats: () => ({
      stdout:
        "Domain: 'web-1'\n  dirtyrate.calc_status=2\n  dirtyrate.calc_period=2\n  dirtyrate.megabytes_per_second=3\n",
    }),
  });
  await conn.domainMigrateSetMaxDowntime({ name: 'web-1', downtimeMs: 2000 });
  assert.equal(await conn.domainMigrateGetMaxDowntime({ name: 'web-1' }), 2000);
  await conn.domainMigrateSetMaxSpeed({ name: 'web-1', bandwidthMiBps: 8 });
  assert.equal(await conn.domainMigrateGetMaxSpeed({ name: 'web-1' }), UNLIMITED_MIGRATION_BANDWIDTH_MIBPS);
  await assert.rejects(conn.domainMigrateStartPostCopy({ name: 'web-1' }), LibvirtInvalidStateError);
  await assert.rejects(conn.domainAbortJob({ name: 'web-1' }), LibvirtInvalidStateError);
  await conn.domainStartDirtyRateCalc({ name: 'web-1', seconds: 2 });
  assert.deepEqual(await conn.domainGetDirtyRate({ name: 'web-1' }), {
    status: 'measured',
    bytesPerSecond: 3 * 1024 * 1024,
    periodSeconds: 2,
  });
  assert.deepEqual(
    calls.map((c) => [c.command, ...c.args].join(' ')),
    [
      'migrate-setmaxdowntime --domain web-1 --downtime 2000',
      'migrate-getmaxdowntime --domain web-1',
      'migrate-setspeed --domain web-1 --bandwidth 8',
      'migrate-getspeed --domain web-1',
      'migrate-postcopy --domain web-1',
      'domjobabort --domain web-1',
      'domdirtyrate-calc --domain web-1 --seconds 2',
      'domstats --raw --dirtyrate web-1',
    ],
  );
  await assert.rejects(conn.domainStartDirtyRateCalc({ name: 'web-1', seconds: 0 }), /seconds/);
  await assert.rejects(conn.domainMigrateSetMaxSpeed({ name: 'web-1', bandwidthMiBps: -1 }), /bandwidthMiBps/);
});

test('job stats of a running outgoing migration say whether it is in post-copy', async () => {
  const running = 'Job type: 2\n\noperation: 5\ntime_elapsed: 5081\nmemory_iteration: 2\n';
  const { conn, calls } = fakeVirsh({
    domjobinfo: () => ({ stdout: running }),
    domstate: () => ({ stdout: 'paused (post-copy)\n\n' }),
  });
  const stats = await conn.domainGetJobStats({ name: 'web-1' });
  assert.equal(stats.type, DomainJobType.unbounded);
  assert.equal(stats.postCopy, true);
  assert.deepEqual(calls.at(-1)?.args, ['--domain', 'web-1', '--reason']);
  const precopy = fakeVirsh({
    domjobinfo: () => ({ stdout: running }),
    domstate: () => ({ stdout: 'running (migration)\n\n' }),
  });
  assert.equal((await precopy.conn.domainGetJobStats({ name: 'web-1' })).postCopy, false);
  // Completed stats (and jobs other than an outgoing migration) take no second call.
  const completed = fakeVirsh({ domjobinfo: () => ({ stdout: 'Job type: 3\n\noperation: 5\ndowntime: 9\n' }) });
  assert.equal((await completed.conn.domainGetJobStats({ name: 'web-1', completed: true })).postCopy, undefined);
  assert.equal(completed.calls.length, 1);
});
