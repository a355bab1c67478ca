import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';

export interface RunInput {
  file: string;
  args: readonly string[];
  /** The process is killed with SIGKILL after this long. */
  timeoutMs?: number;
}

export interface CommandResult {
  exitCode: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  timedOut: boolean;
}

export interface SpawnInput {
  file: string;
  args: readonly string[];
}

/** A long-running command whose stdout is consumed line by line, e.g. `virsh event --loop`. */
export interface SpawnedCommand {
  readonly lines: AsyncIterable<string>;
  /** Resolves when the process has exited; `stdout` is empty because it went to `lines`. */
  readonly exited: Promise<CommandResult>;
  kill(): void;
}

/** The seam between the driver and the OS: tests inject a fake, production uses `createProcessRunner`. */
export interface CommandRunner {
  run(input: RunInput): Promise<CommandResult>;
  spawn(input: SpawnInput): SpawnedCommand;
}

/**
 * Runs commands as child processes without a shell, so arguments are never re-parsed. The C locale is forced
 * because libvirt translates its messages and the error mapping reads them.
 */
export function createProcessRunner(input: { env?: NodeJS.ProcessEnv } = {}): CommandRunner {
  const env = { ...(input.env ?? process.env), LC_ALL: 'C', LANG: 'C' };
  return {
    run: ({ file, args, timeoutMs }) =>
      new Promise((resolve, reject) => {
        const child = spawn(file, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
        const stdout: Buffer[] = [];
        const stderr: Buffer[] = [];
        let timedOut = false;
        const timer =
          timeoutMs === undefined
            ? undefined
            : setTimeout(() => {
                timedOut = true;
                child.kill('SIGKILL');
              }, timeoutMs);
        child.stdout.on('data', (chunk: Buffer) => stdout.push(chunk));
        child.stderr.on('data', (chunk: Buffer) => stderr.push(chunk));
        child.on('error', (err) => {
          clearTimeout(timer);
          reject(err);
        });
        child.on('close', (exitCode, signal) => {
          clearTimeout(timer);
          resolve({
            exitCode,
            signal,
            stdout: Buffer.concat(stdout).toString('utf8'),
            stderr: Buffer.concat(stderr).toString('utf8'),
            timedOut,
          });
        });
      }),

    spawn: ({ file, args }) => {
      const child = spawn(file, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
      const stderr: Buffer[] = [];
      child.stderr.on('data', (chunk: Buffer) => stderr.push(chunk));
      const exited = new Promise<CommandResult>((resolve, reject) => {
        child.on('error', reject);
        child.on('close', (exitCode, signal) =>
          resolve({ exitCode, signal, stdout: '', stderr: Buffer.concat(stderr).toString('utf8'), timedOut: false }),
        );
      });
      return {
        lines: createInterface({ input: child.stdout, crlfDelay: Infinity }),
        exited,
        kill: () => {
          if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
        },
      };
    },
  };
}
