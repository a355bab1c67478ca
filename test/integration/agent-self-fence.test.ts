/**
 * A host agent SIGKILLed beside a running NovaCron guest: its watchdog, a process of its own, destroys the guest
 * before the agent's lease expires as the database records it, and then exits. The invariant: a guest never outlives
 * the lease that lets it run.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { buildDomainXml, detectDomainType } from '../../native/libvirt/domain-xml';
import { assertHypervisorBinaries, startLocalHypervisors, type LocalHypervisors } from '../../native/libvirt/harness';
import { LibvirtConnection } from '../../native/libvirt/libvirt-connection';
import { DomainState } from '../../native/libvirt/libvirt-types';
import { startAgentProcess } from '../support/fleet';
import type { ChildHandle } from '../support/processes';
import { createTestDatabase, scratchDir, type TestDatabase } from '../support/services';
import { waitUntil } from '../support/wait';

const GUEST = 'sf-guest-1';

let db: TestDatabase;
let hypervisors: LocalHypervisors;
let conn: LibvirtConnection;
let agent: ChildHandle | undefined;
let watchdogPid: number | undefined;

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

before(async () => {
  assertHypervisorBinaries();
  db = await createTestDatabase();
  hypervisors = await startLocalHypervisors({ count: 1, baseDir: scratchDir('hv') });
  conn = new LibvirtConnection({ uri: hypervisors.hosts[0]!.uri });
  const imageRoot = scratchDir('sf-images');
  await conn.domainDefineXML({
    xml: buildDomainXml({
      name: GUEST,
      uuid: randomUUID(),
      vcpus: 1,
      // Diskless: SeaBIOS idles with nothing to boot, the cheapest running guest.
      memoryMiB: 32,
      disks: [],
      networks: [],
      metadata: { vmId: 'vm-sf-1', owner: 'self-fence-test' },
      imageRoot,
      domainType: detectDomainType(),
    }),
  });
  await conn.domainCreate({ name: GUEST });
});

after(async () => {
  if (agent && agent.child.exitCode === null && agent.child.signalCode === null) agent.child.kill('SIGKILL');
  await agent?.exited;
  if (watchdogPid !== undefined && alive(watchdogPid)) process.kill(watchdogPid, 'SIGKILL');
  await conn?.domainDestroy({ name: GUEST }).catch(() => undefined);
  await conn?.domainUndefine({ name: GUEST }).catch(() => undefined);
  await hypervisors?.stop();
  await db?.drop();
});

test("a SIGKILLed agent's guest is destroyed before its lease expires, and its watchdog exits", async (t) => {
  const hypervisor = hypervisors.hosts[0]!;
  agent = startAgentProcess({
    hypervisor,
    databaseUrl: db.url,
    imageRoot: path.join(scratchDir('images'), hypervisor.hostId),
    env: {
      NOVACRON_LOG_LEVEL: 'info',
      NOVACRON_AGENT_METRICS_LISTEN_HOST: '127.0.0.1',
      // The test fleet's 3 s lease and 500 ms heartbeat: a margin that leaves more than one heartbeat of slack.
      NOVACRON_FAILOVER_SELF_FENCE_MARGIN_MS: '1000',
      NOVACRON_FAILOVER_ENABLED: 'true',
    },
  });
  const [, pid] = await agent.waitForOutput(/"pid":(\d+),"msg":"host watchdog started"/, 120_000);
  watchdogPid = Number(pid);
  await agent.waitForOutput(/"msg":"host agent polling"/, 120_000);
  // A few renewals, each of which arms the watchdog again.
  await new Promise((resolve) => setTimeout(resolve, 1500));

  agent.child.kill('SIGKILL');
  assert.equal((await agent.exited).signal, 'SIGKILL');
  assert.equal(await conn.domainGetState({ name: GUEST }), DomainState.running, 'the guest died with the agent');
  assert.ok(alive(watchdogPid), 'the watchdog died with its agent');

  await waitUntil(
    'the guest to be destroyed',
    async () => ((await conn.domainGetState({ name: GUEST })) === DomainState.shutOff ? true : undefined),
    {
      timeoutMs: 15_000,
      intervalMs: 100,
    },
  );
  const lease = await db.pool.query<{ before_expiry: boolean; left_ms: number }>(
    `SELECT now() < expires_at AS before_expiry, extract(epoch FROM expires_at - now()) * 1000 AS left_ms
     FROM leases WHERE resource = $1`,
    [`host:${hypervisor.hostId}`],
  );
  assert.equal(lease.rowCount, 1);
  t.diagnostic(`guest seen off ${Math.round(Number(lease.rows[0]!.left_ms))} ms before the lease's expiry`);
  assert.equal(lease.rows[0]!.before_expiry, true, 'the guest outlived its lease');
  // The watchdog logs after the destroy returns, into the dead agent's output: wait for the line, do not race it.
  const killed = agent;
  await waitUntil('the watchdog to log its fence', () => /"by":"watchdog".*"msg":"self-fenced"/.test(killed.output()), {
    timeoutMs: 10_000,
  });
  await waitUntil('the watchdog to exit', () => !alive(watchdogPid!), { timeoutMs: 10_000 });
});

test('a cleanly stopped agent hands its live lease to the next one on its host, and the guest keeps running', async () => {
  const hypervisor = hypervisors.hosts[0]!;
  await conn.domainCreate({ name: GUEST }).catch(() => undefined);
  // One image root for both agents: the handover is left there.
  const imageRoot = path.join(scratchDir('handover-images'), hypervisor.hostId);
  const start = () =>
    startAgentProcess({
      hypervisor,
      databaseUrl: db.url,
      imageRoot,
      env: {
        NOVACRON_LOG_LEVEL: 'info',
        NOVACRON_FAILOVER_SELF_FENCE_MARGIN_MS: '1000',
        NOVACRON_FAILOVER_ENABLED: 'true',
      },
    });
  const lease = async () =>
    (
      await db.pool.query<{ holder: string; token: string; alive: boolean }>(
        `SELECT holder, fencing_token AS token, expires_at > now() AS alive FROM leases WHERE resource = $1`,
        [`host:${hypervisor.hostId}`],
      )
    ).rows[0]!;
  // The first test's lease must have expired first: otherwise this agent waits it out, which is not what is tested.
  await waitUntil('the previous lease to expire', async () => !(await lease()).alive, { timeoutMs: 15_000 });
  agent = start();
  await agent.waitForOutput(/"msg":"host agent polling"/, 120_000);
  const before = await lease();

  agent.child.kill('SIGTERM');
  await agent.exited;
  agent = start();
  await agent.waitForOutput(/"msg":"taking over the lease a cleanly stopped agent handed over"/, 120_000);
  await agent.waitForOutput(/"msg":"host lease acquired"/, 120_000);
  const after = await lease();
  assert.equal(after.holder, before.holder, 'the same holder, handed over');
  assert.equal(Number(after.token), Number(before.token) + 1, 'a new token all the same');
  assert.equal(after.alive, true);
  assert.doesNotMatch(agent.output(), /waiting for it to expire/, 'it did not wait out the TTL');
  // Three seconds is the lease's TTL: the old agent's watchdog was disarmed, the new one's keeps being armed.
  await new Promise((resolve) => setTimeout(resolve, 3500));
  assert.equal(await conn.domainGetState({ name: GUEST }), DomainState.running);
});
