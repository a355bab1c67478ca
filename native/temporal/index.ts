// Runs the embedded Temporal dev server (see README.md) as a child process and hands back its address once it serves.
import { spawn } from 'node:child_process';
import net from 'node:net';
import readline from 'node:readline';
import { ensureTemporalBinary } from './build';

export { ensureTemporalBinary };

export interface TemporalDevServerOptions {
  ip?: string; // default 127.0.0.1
  port: number; // gRPC port; 0 = pick a free port
  uiPort?: number; // undefined/0 = no UI; the caller passes 8233 for npm start
  /** Where a first start's build of the binary reports its progress (ensureTemporalBinary's default otherwise). */
  buildLog?: (message: string) => void;
  dbFile?: string; // undefined = in-memory (tests)
  namespaces?: string[]; // 'default' always included
  logLevel?: string;
  onLog?: (line: string) => void; // receives server stdout/stderr lines
}

export interface TemporalDevServer {
  address: string; // "127.0.0.1:7233"
  uiUrl?: string; // "http://127.0.0.1:8233"
  pid: number;
  stop(): Promise<void>; // SIGTERM, wait, SIGKILL after 10s
}

// Generous because the server's own readiness probe allows 90s and a loaded CI machine can be slow to start it.
const READY_TIMEOUT_MS = 120_000;
const STOP_GRACE_MS = 10_000;
const STDERR_TAIL_LINES = 15;
const READY_PREFIX = 'novacron-temporal ready ';

function hostPort(ip: string, port: number): string {
  return net.isIPv6(ip) ? `[${ip}]:${port}` : `${ip}:${port}`;
}

// Besides asking the kernel for an unused port, the probe connection is closed from the listening side first, which
// leaves that side in TIME_WAIT: Linux then will not hand the same port to the next bind(0) (including the ones the
// server makes for its internal services), while the server can still bind it explicitly.
function findFreePort(ip: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer((socket) => socket.destroy());
    server.once('error', reject);
    server.listen(0, ip, () => {
      const address = server.address();
      if (!address || typeof address === 'string') {
        server.close();
        reject(new Error('could not determine a free port'));
        return;
      }
      const { port } = address;
      const client = net.connect({ host: ip, port });
      const finish = () => server.close(() => resolve(port));
      client.once('close', finish);
      client.once('error', finish);
    });
  });
}

export async function startTemporalDevServer(opts: TemporalDevServerOptions): Promise<TemporalDevServer> {
  const onLog = opts.onLog;
  // Build progress goes to stderr, not onLog: callers tend to route server lines to debug logging, and a silent
  // multi-minute first build looks like a hang.
  const binary = await ensureTemporalBinary(opts.buildLog ? { log: opts.buildLog } : {});
  const ip = opts.ip ?? '127.0.0.1';
  const port = opts.port === 0 ? await findFreePort(ip) : opts.port;
  const uiPort = opts.uiPort ?? 0;

  const args = ['--ip', ip, '--port', String(port), '--ui-port', String(uiPort), '--exit-with-stdin'];
  if (opts.dbFile) args.push('--db-filename', opts.dbFile);
  for (const ns of opts.namespaces ?? []) args.push('--namespace', ns);
  if (opts.logLevel) args.push('--log-level', opts.logLevel);

  // stdin stays an open pipe the server watches: if this process dies without running its exit handler (SIGKILL,
  // crash), the pipe closes and the server shuts itself down instead of holding its ports forever.
  const child = spawn(binary, args, { stdio: ['pipe', 'pipe', 'pipe'] });
  const stderrTail: string[] = [];
  let exited = false;
  const exitPromise = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once('exit', (code, signal) => {
      exited = true;
      resolve({ code, signal });
    });
  });
  const killOnParentExit = () => {
    if (!exited) child.kill('SIGTERM');
  };
  process.once('exit', killOnParentExit);
  void exitPromise.then(() => process.removeListener('exit', killOnParentExit));
  // Writes to a dead child's stdin would otherwise surface as an unhandled EPIPE.
  child.stdin.on('error', () => {});

  const stderrLines = readline.createInterface({ input: child.stderr });
  stderrLines.on('line', (line) => {
    stderrTail.push(line);
    if (stderrTail.length > STDERR_TAIL_LINES) stderrTail.shift();
    onLog?.(line);
  });
  const stdoutLines = readline.createInterface({ input: child.stdout });

  const ready = new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => {
      reject(
        new Error(
          `Temporal dev server did not become ready within ${READY_TIMEOUT_MS / 1000}s` + describeTail(stderrTail),
        ),
      );
    }, READY_TIMEOUT_MS);
    stdoutLines.on('line', (line) => {
      onLog?.(line);
      if (line.startsWith(READY_PREFIX)) {
        clearTimeout(timer);
        resolve(line);
      }
    });
    child.once('error', (err) => {
      clearTimeout(timer);
      reject(new Error(`could not start the Temporal dev server ${binary}: ${err.message}`));
    });
    // 'close' rather than 'exit': it fires after stderr is drained, so the server's own one-line reason is quoted.
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      const how = signal ? `was killed by ${signal}` : `exited with code ${code}`;
      reject(new Error(`Temporal dev server ${how} before it was ready` + describeTail(stderrTail)));
    });
  });

  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> => {
    stopping ??= (async () => {
      if (exited) return;
      child.kill('SIGTERM');
      const timer = new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), STOP_GRACE_MS).unref());
      if ((await Promise.race([exitPromise, timer])) === 'timeout' && !exited) {
        child.kill('SIGKILL');
        await exitPromise;
      }
    })();
    return stopping;
  };

  let readyLine: string;
  try {
    readyLine = await ready;
  } catch (err) {
    await stop();
    throw err;
  }

  const fields = parseReadyLine(readyLine);
  const address = fields.get('grpc') ?? hostPort(ip, port);
  const ui = fields.get('ui');
  const uiUrl = ui && ui !== 'off' ? ui : undefined;
  void exitPromise.then(({ code, signal }) => {
    if (!stopping) onLog?.(`Temporal dev server exited unexpectedly (${signal ?? `code ${code}`})`);
  });
  return { address, ...(uiUrl ? { uiUrl } : {}), pid: child.pid ?? -1, stop };
}

function parseReadyLine(line: string): Map<string, string> {
  const fields = new Map<string, string>();
  for (const token of line.slice(READY_PREFIX.length).trim().split(/\s+/)) {
    const eq = token.indexOf('=');
    if (eq > 0) fields.set(token.slice(0, eq), token.slice(eq + 1));
  }
  return fields;
}

function describeTail(lines: string[]): string {
  return lines.length ? `; last server output:\n${lines.join('\n')}` : '';
}
