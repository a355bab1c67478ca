/**
 * End to end: the stack as `npm start` runs it (embedded PostgreSQL, embedded Temporal with Web UI, control worker
 * and API as child processes) on scratch ports, driven through the API and the CLI; then stopped and started again
 * to prove workflow history and PostgreSQL rows survive. The first start also walks the README's first migration:
 * the test guest it offers, a VM from it made and moved live to the other local host with the CLI lines it prints.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { Pool } from 'pg';
import { freePort } from '../support/ports';
import { isolatedEnv, ROOT, startEntry, type ChildHandle } from '../support/processes';
import { scratchDir } from '../support/services';
import { bearer } from '../support/tokens';

const READY_TIMEOUT_MS = 240_000;
/** For lines the stack prints right after the ready line: a bound for a broken stack, not a speed requirement. */
const LINE_TIMEOUT_MS = 30_000;
/** The first start on a machine without the test guest in its cache builds it (Debian's kernel, a static init). */
const GUEST_TIMEOUT_MS = 600_000;

function cli(args: string[], apiUrl: string, token: string): { code: number | null; stdout: string; stderr: string } {
  const result = spawnSync(path.join(ROOT, 'bin', 'novacron'), [...args, '--api', apiUrl], {
    cwd: ROOT,
    encoding: 'utf8',
    env: isolatedEnv({ NOVACRON_API_TOKEN: token }),
  });
  return { code: result.status, stdout: result.stdout, stderr: result.stderr };
}

async function stopStack(stack: ChildHandle): Promise<void> {
  stack.child.kill('SIGTERM');
  const { code } = await stack.exited;
  assert.equal(code, 0, `the stack exits cleanly on SIGTERM; output:\n${stack.output().slice(-3000)}`);
}

test('npm start brings the stack to ready; a restart keeps workflow history and PostgreSQL rows', async () => {
  const dataDir = scratchDir('stack');
  const ports = {
    api: await freePort(),
    temporal: await freePort(),
    ui: await freePort(),
    pg: await freePort(),
    metrics: await freePort(),
  };
  const env = isolatedEnv({
    NOVACRON_DATA_DIR: dataDir,
    NOVACRON_API_PORT: String(ports.api),
    NOVACRON_TEMPORAL_EMBEDDED_PORT: String(ports.temporal),
    NOVACRON_TEMPORAL_EMBEDDED_UI_PORT: String(ports.ui),
    NOVACRON_STORAGE_EMBEDDED_PORT: String(ports.pg),
    NOVACRON_MONITORING_WORKER_METRICS_PORT: String(ports.metrics),
    NOVACRON_LOG_LEVEL: 'warn',
  });
  const apiUrl = `http://127.0.0.1:${ports.api}`;

  // First start.
  let stack = startEntry('workers/stack.ts', env);
  let firstInitId: string;
  let token: string;
  try {
    await stack.waitForOutput(/NovaCron is ready \((\d+) ms/, READY_TIMEOUT_MS);
    // The first start mints an admin token and prints it once; the CLI and the API calls below use it.
    token = (await stack.waitForOutput(/NOVACRON_API_TOKEN=(nvc_\S+)/, LINE_TIMEOUT_MS))[1]!;
    const auth = { headers: bearer(token) };
    firstInitId = (await stack.waitForOutput(/Boot report\s+\S+\/v1\/workflows\/(\S+)/, LINE_TIMEOUT_MS))[1]!;
    const uiUrl = (await stack.waitForOutput(/Temporal UI\s+(http:\/\/\S+)/, LINE_TIMEOUT_MS))[1]!;

    const ready = await fetch(`${apiUrl}/ready`);
    assert.equal(ready.status, 200);
    assert.equal((await fetch(`${apiUrl}/v1/workflows/${firstInitId}`)).status, 401, 'no token, no answer');
    const detail = (await (await fetch(`${apiUrl}/v1/workflows/${firstInitId}`, auth)).json()) as {
      status: string;
      result: { status: string; components: Array<{ name: string; status: string; durationMs: number }> };
    };
    assert.equal(detail.status, 'COMPLETED');
    assert.ok(['ready', 'degraded'].includes(detail.result.status));
    assert.ok(detail.result.components.some((c) => c.name === 'temporal-namespace' && c.status === 'ok'));

    const ui = await fetch(uiUrl);
    assert.equal(ui.status, 200, `the Web UI answers at ${uiUrl}`);
    assert.match(await ui.text(), /<html/i);

    const workerMetrics = await (await fetch(`http://127.0.0.1:${ports.metrics}/metrics`)).text();
    assert.match(workerMetrics, /novacron_workflow_completions_total/);

    // The CLI against the running API.
    const show = cli(['workflow', 'show', firstInitId], apiUrl, token);
    assert.equal(show.code, 0, show.stderr);
    assert.match(show.stdout, /initializeCluster\s+COMPLETED/);
    assert.match(show.stdout, /postgres\s+ok/);
    const list = cli(['workflow', 'list', '--type', 'initializeCluster'], apiUrl, token);
    assert.equal(list.code, 0, list.stderr);
    assert.ok(list.stdout.includes(firstInitId));
    const init = cli(['init', '--request-id', 'e2e-1', '--wait'], apiUrl, token);
    assert.equal(init.code, 0, init.stderr + init.stdout);
    assert.match(init.stdout, /started cluster-init-e2e-1/);
    assert.match(init.stdout, /boot (ready|degraded) in \d+ ms/);
    const missing = cli(['workflow', 'show', 'no-such-workflow'], apiUrl, token);
    assert.equal(missing.code, 1);
    assert.equal(missing.stderr.trim().split('\n').length, 1);
    assert.match(missing.stderr, /^novacron: 404: /);

    // Tokens through the CLI: a viewer may read but not start an init; once revoked it is refused.
    const created = cli(['token', 'create', 'e2e-viewer', '--role', 'viewer', '--expires', '1h'], apiUrl, token);
    assert.equal(created.code, 0, created.stderr);
    const viewer = created.stdout.match(/NOVACRON_API_TOKEN=(nvc_\S+)/)![1]!;
    assert.match(cli(['token', 'list'], apiUrl, token).stdout, /e2e-viewer\s+viewer\s+expires /);
    assert.equal(cli(['workflow', 'show', firstInitId], apiUrl, viewer).code, 0);
    const denied = cli(['init', '--request-id', 'e2e-denied'], apiUrl, viewer);
    assert.equal(denied.code, 1);
    assert.match(denied.stderr, /^novacron: 403: POST \/v1\/cluster\/init needs role admin/);
    assert.equal(cli(['token', 'revoke', 'e2e-viewer'], apiUrl, token).code, 0);
    assert.match(cli(['workflow', 'show', firstInitId], apiUrl, viewer).stderr, /^novacron: 401: API token revoked/);

    // The audit log shows each of those actions with its actor.
    const audit = cli(['audit', '--limit', '50'], apiUrl, token);
    assert.equal(audit.code, 0, audit.stderr);
    const lines = audit.stdout.trim().split('\n');
    const has = (pattern: RegExp) =>
      assert.ok(
        lines.some((l) => pattern.test(l)),
        `${pattern} in\n${audit.stdout}`,
      );
    has(/accepted\s+token:initial-admin {2}POST \/v1\/cluster\/init {2}workflow cluster-init-e2e-1 {2}request /);
    has(/accepted\s+node:novacron-1 {2}cluster\.init .*workflow cluster-init-e2e-1/);
    has(/accepted\s+token:initial-admin {2}POST \/v1\/tokens\s+e2e-viewer/);
    has(/rejected\s+token:e2e-viewer {2}POST \/v1\/cluster\/init/);
    has(/accepted\s+token:initial-admin {2}DELETE \/v1\/tokens\/:ref\s+e2e-viewer/);

    // The README's walkthrough, as the stack prints it: a VM from the test guest on the local hosts' shared pool,
    // then moved live to the other host.
    await stack.waitForOutput(/test guest registered as image novacron-testguest/, GUEST_TIMEOUT_MS);
    const create = (await stack.waitForOutput(/a VM from it: bin\/novacron (.+)\n/, LINE_TIMEOUT_MS))[1]!;
    assert.match(create, /^vm create tg-1 .*--image novacron-testguest --pool shared .*--wait$/);
    const vmCreated = cli(create.split(' '), apiUrl, token);
    assert.equal(vmCreated.code, 0, vmCreated.stderr + vmCreated.stdout);
    const vmId = /\(VM ([0-9a-f-]{36})\)/.exec(vmCreated.stdout)![1]!;
    const shown = () => JSON.parse(cli(['vm', 'show', vmId], apiUrl, token).stdout) as { hostId: string };
    const source = shown().hostId;
    const migrate = (await stack.waitForOutput(/then move it: bin\/novacron (.+)\n/, LINE_TIMEOUT_MS))[1]!;
    const moved = cli(migrate.replace('<VM id>', vmId).split(' '), apiUrl, token);
    assert.equal(moved.code, 0, moved.stderr + moved.stdout);
    assert.match(moved.stdout, /^plan: /m);
    const target = shown().hostId;
    assert.ok(['host-1', 'host-2'].includes(target) && target !== source, `${vmId} moved from ${source} to ${target}`);
    const deleted = cli(['vm', 'delete', vmId, '--wait'], apiUrl, token);
    assert.equal(deleted.code, 0, deleted.stderr + deleted.stdout);
  } finally {
    await stopStack(stack);
  }

  // Second start on the same data dir.
  const secondStartAt = new Date();
  stack = startEntry('workers/stack.ts', env);
  try {
    await stack.waitForOutput(/NovaCron is ready/, READY_TIMEOUT_MS);
    assert.doesNotMatch(stack.output(), /NOVACRON_API_TOKEN=/, 'a token exists, so none is minted again');
    const auth = { headers: bearer(token) };
    const earlier = await fetch(`${apiUrl}/v1/workflows/${firstInitId}`, auth);
    assert.equal(earlier.status, 200, 'the first boot workflow is still in Temporal after the restart');
    assert.equal(((await earlier.json()) as { status: string }).status, 'COMPLETED');
    const e2e = (await (await fetch(`${apiUrl}/v1/workflows/cluster-init-e2e-1`, auth)).json()) as { status: string };
    assert.equal(e2e.status, 'COMPLETED');

    const pool = new Pool({
      connectionString: `postgres://novacron:novacron-local@127.0.0.1:${ports.pg}/novacron`,
      max: 1,
    });
    try {
      const boots = await pool.query<{ workflow_id: string }>(
        'SELECT workflow_id FROM cluster_boots ORDER BY completed_at',
      );
      const ids = boots.rows.map((r) => r.workflow_id);
      assert.equal(ids.length, 3, `two boots and one CLI init are recorded: ${ids.join(', ')}`);
      assert.equal(ids[0], firstInitId);
      assert.ok(ids.includes('cluster-init-e2e-1'));
      const migrations = await pool.query<{ applied_at: Date }>('SELECT applied_at FROM schema_migrations');
      assert.ok(migrations.rows.length >= 1);
      assert.ok(
        migrations.rows.every((r) => r.applied_at < secondStartAt),
        'every migration was applied by the first start, none again by the second',
      );
    } finally {
      await pool.end();
    }
  } finally {
    await stopStack(stack);
  }
});

test('a bad config stops start-up with one readable line and exit 2', () => {
  const dir = scratchDir('badconfig');
  const file = path.join(dir, 'bad.yaml');
  writeFileSync(file, 'api:\n  port: 99999\n');
  const result = spawnSync(
    process.execPath,
    ['--import', 'tsx', path.join(ROOT, 'workers/stack.ts'), '--config', file],
    {
      cwd: ROOT,
      encoding: 'utf8',
      env: isolatedEnv({ NOVACRON_DATA_DIR: path.join(dir, 'data') }),
    },
  );
  assert.equal(result.status, 2);
  const lines = result.stderr.trim().split('\n');
  assert.equal(lines.length, 1, result.stderr);
  assert.match(lines[0]!, /^novacron: invalid config \(.*bad\.yaml\): api\.port: /);

  const check = spawnSync(path.join(ROOT, 'bin', 'novacron'), ['config', 'check', file], {
    cwd: ROOT,
    encoding: 'utf8',
    env: isolatedEnv({}),
  });
  assert.equal(check.status, 2);
  assert.equal(check.stderr.trim().split('\n').length, 1);
  assert.match(check.stderr, /api\.port/);
  const good = spawnSync(
    path.join(ROOT, 'bin', 'novacron'),
    ['config', 'check', path.join(ROOT, 'config', 'novacron.yaml')],
    {
      cwd: ROOT,
      encoding: 'utf8',
      env: isolatedEnv({}),
    },
  );
  assert.equal(good.status, 0, good.stderr);
  assert.match(good.stdout, /ok \(profile datacenter/);
});
