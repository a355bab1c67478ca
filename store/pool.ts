import { Pool } from 'pg';

export interface CreatePoolInput {
  databaseUrl: string;
  max?: number;
  applicationName: string;
}

export function createPool(input: CreatePoolInput): Pool {
  const pool = new Pool({
    connectionString: input.databaseUrl,
    max: input.max ?? 10,
    application_name: input.applicationName,
    connectionTimeoutMillis: 5000,
  });
  // An idle client losing its server must not crash the process; the next query reports the outage.
  pool.on('error', () => undefined);
  return pool;
}

/** The URL with its password masked, for logs and printed URLs. */
export function redactDatabaseUrl(databaseUrl: string): string {
  try {
    const url = new URL(databaseUrl);
    if (url.password) url.password = '***';
    return url.toString();
  } catch {
    return '<unparseable DATABASE_URL>';
  }
}
