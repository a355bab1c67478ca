/**
 * Runs the stack's processes as children and restarts one that dies, with backoff, so a crashed worker or API
 * comes back while its workflows wait in Temporal.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import type { Logger } from 'pino';

const ROOT = path.resolve(__dirname, '..');

export interface ServiceSpec {
  name: string;
  /** A TypeScript entry point relative to the repository root, run with tsx. */
  entry: string;
  env: NodeJS.ProcessEnv;
}

export interface SupervisedService {
  name: string;
  pid(): number | undefined;
  stop(): Promise<void>;
}

export function superviseService(spec: ServiceSpec, logger: Logger): SupervisedService {
  let child: ChildProcess | undefined;
  let stopping = false;
  let restarts = 0;
  let startedAt = 0;

  const launch = () => {
    startedAt = Date.now();
    child = spawn(process.execPath, ['--import', 'tsx', path.join(ROOT, spec.entry)], {
      cwd: ROOT,
      env: spec.env,
      stdio: ['ignore', 'inherit', 'inherit'],
    });
    child.once('exit', (code, signal) => {
      if (stopping) return;
      // A process that ran a while earns a fresh backoff; one that crash-loops waits up to 30 s.
      if (Date.now() - startedAt > 60_000) restarts = 0;
      const delayMs = Math.min(30_000, 500 * 2 ** restarts++);
      logger.warn({ service: spec.name, code, signal, restartInMs: delayMs }, 'service exited; restarting');
      setTimeout(() => {
        if (!stopping) launch();
      }, delayMs).unref();
    });
  };
  launch();

  return {
    name: spec.name,
    pid: () => child?.pid,
    async stop() {
      stopping = true;
      const current = child;
      if (!current || current.exitCode !== null || current.signalCode !== null) return;
      await new Promise<void>((resolve) => {
        const killer = setTimeout(() => current.kill('SIGKILL'), 15_000);
        current.once('exit', () => {
          clearTimeout(killer);
          resolve();
        });
        current.kill('SIGTERM');
      });
    },
  };
}
