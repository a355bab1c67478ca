/**
 * API tokens against a real PostgreSQL: the first admin token is minted once even when several stacks start on one
 * database at the same moment, secrets are checked exactly, and the stored row cannot be turned back into a token.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { createTestDatabase, type TestDatabase } from '../test/support/services';
import { authenticateApiToken, createApiToken, createInitialAdminToken, revokeApiToken } from './api-tokens';

let db: TestDatabase;

before(async () => {
  db = await createTestDatabase();
});

after(async () => {
  await db.drop();
});

test('concurrent first starts mint exactly one admin token; later starts mint none', async () => {
  // A first start needs an empty token table: a database of its own, whatever other tests wrote to theirs.
  const fresh = await createTestDatabase();
  try {
    const minted = await Promise.all(Array.from({ length: 5 }, () => createInitialAdminToken(fresh.pool)));
    const tokens = minted.filter((t): t is string => t !== undefined);
    assert.equal(tokens.length, 1, JSON.stringify(minted));
    assert.equal(await createInitialAdminToken(fresh.pool), undefined);
    const check = await authenticateApiToken(fresh.pool, { token: tokens[0]! });
    assert.ok(check.ok);
    assert.deepEqual(check.record.roles, ['admin']);
    assert.equal(check.record.name, 'initial-admin');
  } finally {
    await fresh.drop();
  }
});

test('a token authenticates only with its exact secret, until it expires or is revoked', async () => {
  const { token, record } = await createApiToken(db.pool, {
    name: 'store-test',
    roles: ['operator', 'operator', 'viewer'],
    createdBy: 'test',
    expiresAt: new Date(Date.now() + 60_000),
  });
  assert.match(token, /^nvc_[0-9a-f]{16}\.[A-Za-z0-9_-]{43}$/);
  assert.deepEqual(record.roles, ['operator', 'viewer'], 'duplicate roles are stored once');
  const [prefix, secret] = token.split('.') as [string, string];
  const flipped = `${prefix}.${secret[0] === 'A' ? 'B' : 'A'}${secret.slice(1)}`;
  assert.deepEqual(await authenticateApiToken(db.pool, { token: flipped }), { ok: false, reason: 'unknown' });
  assert.deepEqual(await authenticateApiToken(db.pool, { token: `${token}x` }), { ok: false, reason: 'malformed' });
  assert.deepEqual(await authenticateApiToken(db.pool, { token: 'nvc_ffffffffffffffff.' + secret }), {
    ok: false,
    reason: 'unknown',
  });
  assert.ok((await authenticateApiToken(db.pool, { token })).ok);
  const later = new Date(Date.now() + 120_000);
  assert.deepEqual(await authenticateApiToken(db.pool, { token, now: later }), { ok: false, reason: 'expired' });

  const row = await db.pool.query<{ secret_hash: Buffer }>('SELECT secret_hash FROM api_tokens WHERE id = $1', [
    record.id,
  ]);
  assert.equal(row.rows[0]!.secret_hash.length, 32);
  assert.ok(!row.rows[0]!.secret_hash.toString('latin1').includes(secret));

  assert.equal((await revokeApiToken(db.pool, { ref: record.id }))?.name, 'store-test');
  assert.deepEqual(await authenticateApiToken(db.pool, { token }), { ok: false, reason: 'revoked' });
  // The name is free again once its token is revoked.
  await createApiToken(db.pool, { name: 'store-test', roles: ['viewer'], createdBy: 'test' });
});
