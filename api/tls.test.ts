/**
 * Integration: `novacron certs` builds a CA and host certificates, the API serves HTTPS with one of them, and the
 * same files configure Temporal mTLS. Secrets never reach the log: a request with a bearer token, a token creation
 * and the usual log shapes are written through the real logger, and the output is searched for the secrets.
 */
import type { Client, Connection } from '@temporalio/client';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import https from 'node:https';
import path from 'node:path';
import { Writable } from 'node:stream';
import { after, before, test } from 'node:test';
import pino from 'pino';
import type { NovacronConfig } from '../config/schema';
import { createLogger } from '../observability/logger';
import { createMetrics } from '../observability/metrics';
import {
  createTestDatabase,
  scratchDir,
  temporalClient,
  testConfig,
  type TestDatabase,
} from '../test/support/services';
import { bearer, mintToken } from '../test/support/tokens';
import { temporalTarget } from '../workers/temporal-clients';
import { buildApp } from './app';
import { runCli } from '../cli/main';

let db: TestDatabase;
let client: Client;
let connection: Connection;
let certDir: string;

before(async () => {
  db = await createTestDatabase();
  ({ client, connection } = await temporalClient());
  certDir = scratchDir('certs');
  const lines: string[] = [];
  const code = await runCli(['certs', '--dir', certDir, '--host', 'api-1,worker-1'], (line) => lines.push(line));
  assert.equal(code, 0);
  assert.match(lines.join('\n'), /created CA .*ca\.crt/);
  assert.match(lines.join('\n'), /issued .*api-1\.crt .* for localhost, 127\.0\.0\.1/);
});

after(async () => {
  await connection.close();
  await db.drop();
});

function get(input: { port: number; ca?: Buffer; token: string }): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const request = https.get(
      {
        host: '127.0.0.1',
        port: input.port,
        path: '/v1/tokens',
        headers: bearer(input.token),
        ...(input.ca ? { ca: input.ca } : {}),
      },
      (response) => {
        let body = '';
        response.on('data', (chunk: Buffer) => (body += chunk.toString()));
        response.on('end', () => resolve({ status: response.statusCode ?? 0, body }));
      },
    );
    request.on('error', reject);
  });
}

test('the API serves HTTPS with a certificate from `novacron certs`; untrusted clients are refused', async () => {
  const config: NovacronConfig = testConfig({
    databaseUrl: db.url,
    overrides: {
      api: {
        host: '127.0.0.1',
        tls: { certFile: path.join(certDir, 'api-1.crt'), keyFile: path.join(certDir, 'api-1.key') },
      },
    },
  });
  const built = await buildApp({
    config,
    temporal: client,
    pool: db.pool,
    metrics: createMetrics({ service: 'tls-test' }),
    logger: pino({ level: 'silent' }),
    checkResponses: true,
  });
  try {
    const address = await built.app.listen({ host: '127.0.0.1', port: 0 });
    assert.match(address, /^https:\/\//);
    const port = Number(new URL(address).port);
    const token = await mintToken(db.pool, { roles: ['admin'] });
    const ca = readFileSync(path.join(certDir, 'ca', 'ca.crt'));
    const ok = await get({ port, ca, token });
    assert.equal(ok.status, 200, ok.body);
    await assert.rejects(get({ port, token }), /self[- ]signed|unable to verify|unable to get local issuer/i);
    await assert.rejects(fetch(`http://127.0.0.1:${port}/health`), 'plain HTTP is not served');
  } finally {
    await built.close();
  }
});

test('Temporal mTLS settings load the client pair and CA from the generated files', () => {
  const config = testConfig({
    overrides: {
      temporal: {
        address: 'temporal.example:7233',
        tls: {
          caFile: path.join(certDir, 'ca', 'ca.crt'),
          certFile: path.join(certDir, 'worker-1.crt'),
          keyFile: path.join(certDir, 'worker-1.key'),
          serverName: 'temporal.example',
        },
      },
    },
  });
  const target = temporalTarget(config);
  assert.equal(target.address, 'temporal.example:7233');
  const { tls } = target;
  assert.ok(tls);
  assert.equal(tls.serverNameOverride, 'temporal.example');
  assert.match(tls.clientCertPair.crt.toString(), /BEGIN CERTIFICATE/);
  assert.match(tls.clientCertPair.key.toString(), /PRIVATE KEY/);
  assert.match(String(tls.serverRootCACertificate), /BEGIN CERTIFICATE/);
});

test('no secret appears in the log: bearer tokens, new token secrets and secret-named fields are redacted', async () => {
  let output = '';
  const destination = new Writable({
    write(chunk: Buffer, _encoding, done) {
      output += chunk.toString();
      done();
    },
  });
  const config = testConfig({ databaseUrl: db.url, overrides: { system: { logLevel: 'trace' } } });
  const logger = createLogger({ service: 'api', config, destination });
  const built = await buildApp({
    config,
    temporal: client,
    pool: db.pool,
    metrics: createMetrics({ service: 'redaction-test' }),
    logger,
    checkResponses: true,
  });
  const admin = await mintToken(db.pool, { roles: ['admin'], name: 'redaction-admin' });
  let newToken: string | undefined;
  try {
    const created = await built.app.inject({
      method: 'POST',
      url: '/v1/tokens',
      headers: { ...bearer(admin), cookie: 'session=cookie-secret-value' },
      payload: { name: 'redaction-new', roles: ['viewer'] },
    });
    assert.equal(created.statusCode, 201, created.body);
    newToken = created.json<{ token: string }>().token;
    const refused = await built.app.inject({
      method: 'GET',
      url: '/v1/tokens',
      headers: { authorization: 'Bearer nvc_0123456789abcdef.wrong-secret-wrong-secret-wrong-secret-wron' },
    });
    assert.equal(refused.statusCode, 401);

    // The shapes code tends to log: a request with its headers, a token field, a config with a password.
    const headers = { ...bearer(admin), cookie: 'session=cookie-secret-value' };
    logger.info({ req: { method: 'GET', url: '/v1/tokens', headers } }, 'request with headers');
    logger.child({ component: 'cli' }).warn({ request: { headers } }, 'nested request');
    logger.info({ token: newToken, password: 'hunter2-password', secret: 'the-secret-value' }, 'fields');
    logger.info({ storage: { databaseUrl: 'postgres://u:db-password@h/db' } }, 'config');
  } finally {
    await built.close();
  }
  assert.match(output, /incoming request/, 'the requests themselves were logged');
  assert.ok((output.match(/\[redacted\]/g) ?? []).length >= 7, output);
  assert.ok(newToken);
  for (const secret of [
    admin,
    newToken.split('.')[1]!,
    admin.split('.')[1]!,
    'wrong-secret-wrong-secret',
    'cookie-secret-value',
    'hunter2-password',
    'the-secret-value',
    'db-password',
  ]) {
    assert.ok(!output.includes(secret), `${secret.slice(0, 12)}... must not be logged`);
  }
});
