/**
 * Bearer API tokens. A token reads `nvc_<id>.<secret>`: the id finds the row, and only SHA-256(secret) is stored,
 * compared in constant time. 256 random bits make the hash safe without a slow KDF: there is nothing to guess.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import type { Pool } from 'pg';

export const API_ROLES = ['viewer', 'operator', 'admin'] as const;
export type ApiRole = (typeof API_ROLES)[number];

export const TOKEN_NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const TOKEN_PATTERN = /^nvc_([0-9a-f]{16})\.([A-Za-z0-9_-]{43})$/;
// Compared against when the id is unknown, so an unknown id costs the same hash and compare as a known one.
const DUMMY_HASH = Buffer.alloc(32);

export interface ApiTokenRecord {
  id: string;
  name: string;
  roles: ApiRole[];
  createdBy: string;
  createdAt: string;
  expiresAt?: string;
  revokedAt?: string;
}

export class TokenNameTakenError extends Error {
  override readonly name = 'TokenNameTakenError';
}

interface TokenRow {
  id: string;
  name: string;
  secret_hash: Buffer;
  roles: ApiRole[];
  created_by: string;
  created_at: Date;
  expires_at: Date | null;
  revoked_at: Date | null;
}

const COLUMNS = 'id, name, secret_hash, roles, created_by, created_at, expires_at, revoked_at';

function toRecord(row: TokenRow): ApiTokenRecord {
  return {
    id: row.id,
    name: row.name,
    roles: row.roles,
    createdBy: row.created_by,
    createdAt: row.created_at.toISOString(),
    ...(row.expires_at ? { expiresAt: row.expires_at.toISOString() } : {}),
    ...(row.revoked_at ? { revokedAt: row.revoked_at.toISOString() } : {}),
  };
}

function hashSecret(secret: string): Buffer {
  return createHash('sha256').update(secret).digest();
}

export function looksLikeApiToken(bearer: string): boolean {
  return bearer.startsWith('nvc_');
}

export interface CreateApiTokenInput {
  name: string;
  roles: ApiRole[];
  createdBy: string;
  expiresAt?: Date;
}

/** Returns the plaintext token once; it cannot be recovered afterwards. */
export async function createApiToken(
  pool: Pick<Pool, 'query'>,
  input: CreateApiTokenInput,
): Promise<{ token: string; record: ApiTokenRecord }> {
  if (!TOKEN_NAME_PATTERN.test(input.name)) throw new Error(`invalid token name: ${JSON.stringify(input.name)}`);
  const id = randomBytes(8).toString('hex');
  const secret = randomBytes(32).toString('base64url');
  try {
    const result = await pool.query<TokenRow>(
      `INSERT INTO api_tokens (id, name, secret_hash, roles, created_by, expires_at)
       VALUES ($1, $2, $3, $4, $5, $6) RETURNING ${COLUMNS}`,
      [id, input.name, hashSecret(secret), [...new Set(input.roles)], input.createdBy, input.expiresAt ?? null],
    );
    return { token: `nvc_${id}.${secret}`, record: toRecord(result.rows[0]!) };
  } catch (err) {
    if ((err as { code?: string }).code === '23505') {
      throw new TokenNameTakenError(`a live token named ${JSON.stringify(input.name)} exists; revoke it first`);
    }
    throw err;
  }
}

export type TokenCheck =
  { ok: true; record: ApiTokenRecord } | { ok: false; reason: 'malformed' | 'unknown' | 'expired' | 'revoked' };

export async function authenticateApiToken(
  pool: Pick<Pool, 'query'>,
  input: { token: string; now?: Date },
): Promise<TokenCheck> {
  const match = TOKEN_PATTERN.exec(input.token);
  if (!match) return { ok: false, reason: 'malformed' };
  const result = await pool.query<TokenRow>(`SELECT ${COLUMNS} FROM api_tokens WHERE id = $1`, [match[1]]);
  const row = result.rows[0];
  const presented = hashSecret(match[2]!);
  const equal = timingSafeEqual(presented, row?.secret_hash ?? DUMMY_HASH);
  if (!row || !equal) return { ok: false, reason: 'unknown' };
  if (row.revoked_at) return { ok: false, reason: 'revoked' };
  if (row.expires_at && row.expires_at.getTime() <= (input.now ?? new Date()).getTime()) {
    return { ok: false, reason: 'expired' };
  }
  return { ok: true, record: toRecord(row) };
}

export async function listApiTokens(
  pool: Pick<Pool, 'query'>,
  input: { includeRevoked: boolean },
): Promise<ApiTokenRecord[]> {
  const result = await pool.query<TokenRow>(
    `SELECT ${COLUMNS} FROM api_tokens WHERE $1 OR revoked_at IS NULL ORDER BY created_at, id`,
    [input.includeRevoked],
  );
  return result.rows.map(toRecord);
}

/** Revokes the live token with this id, or else with this name; undefined when there is none. */
export async function revokeApiToken(
  pool: Pick<Pool, 'query'>,
  input: { ref: string },
): Promise<ApiTokenRecord | undefined> {
  const result = await pool.query<TokenRow>(
    `UPDATE api_tokens SET revoked_at = now()
     WHERE id = (SELECT id FROM api_tokens WHERE revoked_at IS NULL AND (id = $1 OR name = $1)
                 ORDER BY (id = $1) DESC LIMIT 1)
     RETURNING ${COLUMNS}`,
    [input.ref],
  );
  const row = result.rows[0];
  return row ? toRecord(row) : undefined;
}

/**
 * At first start there is no way to call the API, so the stack mints an admin token when the table is empty. The
 * table lock makes two stacks starting on one database mint one token, not two.
 */
export async function createInitialAdminToken(pool: Pool): Promise<string | undefined> {
  const client = await pool.connect();
  try {
    await client.query('BEGIN');
    await client.query('LOCK TABLE api_tokens IN EXCLUSIVE MODE');
    const existing = await client.query('SELECT 1 FROM api_tokens LIMIT 1');
    if (existing.rowCount !== 0) {
      await client.query('ROLLBACK');
      return undefined;
    }
    const { token } = await createApiToken(client, { name: 'initial-admin', roles: ['admin'], createdBy: 'stack' });
    await client.query('COMMIT');
    return token;
  } catch (err) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw err;
  } finally {
    client.release();
  }
}
