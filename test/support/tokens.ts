/** API tokens for tests: minted straight into the test's database, as the stack mints the first admin token. */
import type { Pool } from 'pg';
import { createApiToken, type ApiRole } from '../../store/api-tokens';

export async function mintToken(
  pool: Pool,
  input: { roles: ApiRole[]; name?: string; expiresAt?: Date },
): Promise<string> {
  const { token } = await createApiToken(pool, {
    name: input.name ?? `test-${input.roles.join('-')}-${Math.random().toString(36).slice(2, 8)}`,
    roles: input.roles,
    createdBy: 'test',
    ...(input.expiresAt ? { expiresAt: input.expiresAt } : {}),
  });
  return token;
}

export function bearer(token: string): { authorization: string } {
  return { authorization: `Bearer ${token}` };
}
