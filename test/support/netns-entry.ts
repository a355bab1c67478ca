/**
 * A NovaCron entry point started inside a named network namespace (`ip netns exec <netns> node …`), so that a host
 * agent of a networked harness host sends what it sends to peers over that host's own link, as the migration does.
 * `ip netns exec` execs the command in place, so the child's PID is node's and signals reach the agent itself.
 */
import { spawn } from 'node:child_process';
import path from 'node:path';
import { ROOT, type ChildHandle } from './processes';

export function startEntryInNetns(input: { netns: string; entry: string; env: NodeJS.ProcessEnv }): ChildHandle {
  const child = spawn(
    'ip',
    ['netns', 'exec', input.netns, process.execPath, '--import', 'tsx', path.join(ROOT, input.entry)],
    { cwd: ROOT, env: input.env, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let text = '';
  const listeners = new Set<() => void>();
  const onData = (chunk: Buffer) => {
    text += chunk.toString();
    for (const listener of listeners) listener();
  };
  child.stdout.on('data', onData);
  child.stderr.on('data', onData);
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('exit', (code, signal) => resolve({ code, signal })),
  );
  const what = `${input.entry} in ${input.netns}`;
  return {
    child,
    output: () => text,
    exited,
    waitForOutput(pattern, timeoutMs) {
      return new Promise((resolve, reject) => {
        const check = () => {
          const match = text.match(pattern);
          if (match) {
            cleanup();
            resolve(match);
          }
        };
        const timer = setTimeout(() => {
          cleanup();
          reject(new Error(`timed out waiting for ${pattern} from ${what}; output so far:\n${text.slice(-4000)}`));
        }, timeoutMs);
        const onExit = () => {
          cleanup();
          reject(new Error(`${what} exited before printing ${pattern}; output:\n${text.slice(-4000)}`));
        };
        const cleanup = () => {
          clearTimeout(timer);
          listeners.delete(check);
          child.off('exit', onExit);
        };
        listeners.add(check);
        child.once('exit', onExit);
        check();
      });
    },
  };
}
