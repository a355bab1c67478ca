/**
 * docker-compose.yml cannot be run here (no Docker engine), so its structure is checked instead: the Temporal images
 * match the server version `npm start` builds, services start in the order the schema and namespace need, every
 * file a service names exists, and the inline scripts parse as shell.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, test } from 'node:test';
import { parse as parseYaml } from 'yaml';
import { configSchema } from './schema';

const ROOT = path.resolve(__dirname, '..');

interface Service {
  image?: string;
  build?: string;
  command?: string[];
  entrypoint?: string[];
  environment?: Record<string, string>;
  depends_on?: Record<string, { condition: string }>;
  volumes?: string[];
  healthcheck?: { test: string[] };
}

const compose = parseYaml(readFileSync(path.join(ROOT, 'docker-compose.yml'), 'utf8')) as {
  services: Record<string, Service>;
};
const services = compose.services;

function service(name: string): Service {
  const found = services[name];
  assert.ok(found, `docker-compose.yml has no service ${name}`);
  return found;
}

const serverVersion = /^\s*go\.temporal\.io\/server v(\S+)$/m.exec(
  readFileSync(path.join(ROOT, 'native/temporal/go.mod'), 'utf8'),
)?.[1];

/** The script a one-shot service runs, as the shell sees it once compose has turned `$$` into `$`. */
function script(name: string): string {
  const { entrypoint, command } = service(name);
  assert.deepEqual(entrypoint, ['/bin/sh', '-ec'], `${name} runs its command as a shell script that stops on errors`);
  assert.equal(command?.length, 1);
  return command[0]!.replaceAll('$$', '$');
}

describe('docker-compose.yml', () => {
  test('runs Temporal server and admin tools at the version native/temporal/go.mod builds', () => {
    assert.ok(serverVersion, 'go.temporal.io/server not found in native/temporal/go.mod');
    const temporalImages = Object.values(services)
      .map((s) => s.image ?? '')
      .filter((image) => image.startsWith('temporalio/') && !image.startsWith('temporalio/ui:'));
    assert.deepEqual(temporalImages.sort(), [
      `temporalio/admin-tools:${serverVersion}`,
      `temporalio/admin-tools:${serverVersion}`,
      `temporalio/server:${serverVersion}`,
    ]);
  });

  test('starts in order: postgres, schema, server, namespace, then the worker and the API', () => {
    const after = (name: string) =>
      Object.fromEntries(
        Object.entries(service(name).depends_on ?? {}).map(([dep, { condition }]) => [dep, condition]),
      );
    assert.deepEqual(after('temporal-schema'), { postgres: 'service_healthy' });
    assert.deepEqual(after('temporal'), { 'temporal-schema': 'service_completed_successfully' });
    assert.deepEqual(after('temporal-namespace'), { temporal: 'service_healthy' });
    assert.deepEqual(after('temporal-ui'), { temporal: 'service_healthy' });
    for (const app of ['worker', 'api']) {
      assert.deepEqual(after(app), {
        postgres: 'service_healthy',
        'temporal-namespace': 'service_completed_successfully',
      });
    }
    for (const [name, s] of Object.entries(services)) {
      for (const [dep, { condition }] of Object.entries(s.depends_on ?? {})) {
        if (condition === 'service_healthy')
          assert.ok(service(dep).healthcheck, `${name} waits on ${dep}'s health check`);
      }
    }
  });

  test('the schema job sets up both Temporal databases on the compose PostgreSQL, as the server reads them', () => {
    const postgres = service('postgres').environment!;
    const schemaEnv = service('temporal-schema').environment!;
    assert.deepEqual(schemaEnv, {
      SQL_PLUGIN: 'postgres12',
      SQL_HOST: 'postgres',
      SQL_PORT: '5432',
      SQL_USER: postgres.POSTGRES_USER,
      SQL_PASSWORD: postgres.POSTGRES_PASSWORD,
    });
    const lines = script('temporal-schema').trim().split('\n');
    // The server's defaults (DBNAME temporal, VISIBILITY_DBNAME temporal_visibility) with their embedded schemas.
    for (const [db, schema] of [
      ['temporal', 'postgresql/v12/temporal'],
      ['temporal_visibility', 'postgresql/v12/visibility'],
    ]) {
      assert.deepEqual(
        lines.filter((line) => line.includes(`--db ${db} `)),
        [
          `temporal-sql-tool --db ${db} create`,
          `temporal-sql-tool --db ${db} setup-schema -v 0.0`,
          `temporal-sql-tool --db ${db} update-schema --schema-name ${schema}`,
        ],
      );
    }
    const server = service('temporal').environment!;
    assert.equal(server.DB, schemaEnv.SQL_PLUGIN);
    assert.equal(server.POSTGRES_SEEDS, schemaEnv.SQL_HOST);
    assert.equal(server.DB_PORT, schemaEnv.SQL_PORT);
    assert.equal(server.POSTGRES_USER, postgres.POSTGRES_USER);
    assert.equal(server.POSTGRES_PWD, postgres.POSTGRES_PASSWORD);
    assert.equal(server.DBNAME ?? 'temporal', 'temporal');
    assert.equal(server.VISIBILITY_DBNAME ?? 'temporal_visibility', 'temporal_visibility');
  });

  test('registers the namespace NovaCron uses by default', () => {
    const namespace = configSchema.parse({}).temporal.namespace;
    assert.match(script('temporal-namespace'), new RegExp(`namespace create --namespace ${namespace}$`, 'm'));
  });

  test('the inline scripts parse as shell, with every $ escaped from compose interpolation', () => {
    for (const name of ['temporal-schema', 'temporal-namespace']) {
      const raw = service(name).command![0]!;
      assert.doesNotMatch(raw.replaceAll('$$', ''), /\$/, `${name}: a lone $ would be interpolated by compose`);
      const check = spawnSync('sh', ['-n', '-c', script(name)], { encoding: 'utf8' });
      assert.equal(check.status, 0, `${name}: ${check.stderr}`);
    }
  });

  test('every file a service runs or mounts exists in the repository', () => {
    const named: string[] = [];
    for (const s of Object.values(services)) {
      if (s.build) named.push(path.join(s.build, 'Dockerfile'));
      if (s.build) named.push(...(s.command ?? []).filter((arg) => arg.endsWith('.ts')));
      for (const volume of s.volumes ?? []) if (volume.startsWith('./')) named.push(volume.split(':')[0]!);
    }
    assert.ok(named.includes('workers/control-worker.ts') && named.includes('api/server.ts'), named.join(', '));
    assert.ok(named.includes('./docker/temporal/dynamic-config.yaml'), named.join(', '));
    for (const file of named) assert.ok(existsSync(path.join(ROOT, file)), `docker-compose.yml names ${file}`);
  });

  test('the Dockerfile default command and the README commands name files that exist', () => {
    const cmd = /^CMD (\[.*\])$/m.exec(readFileSync(path.join(ROOT, 'Dockerfile'), 'utf8'))?.[1];
    assert.ok(cmd, 'Dockerfile has a CMD');
    const files = (JSON.parse(cmd) as string[]).filter((arg) => arg.endsWith('.ts'));
    const readme = readFileSync(path.join(ROOT, 'README.md'), 'utf8');
    files.push(...[...readme.matchAll(/node --import tsx (\S+\.ts)/g)].map((m) => m[1]!));
    assert.ok(files.includes('cli/main.ts'), 'README runs the CLI in the api container');
    for (const file of files) assert.ok(existsSync(path.join(ROOT, file)), `${file} does not exist`);
  });
});
