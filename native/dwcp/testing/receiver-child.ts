/**
 * A DWCP receiver in a child process (receiver-process.ts), which a test can SIGKILL and start again, and a look at
 * the journal it leaves on disk.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import type { TestPki } from './fixtures';

export interface ReceiverProcess {
  child: ChildProcess;
  port: number;
  /** The `done` line's identity: the file's sha256, or `digest:<manifest digest>`. */
  done: Promise<string>;
}

/** Starts receiver-process.ts for one transfer; resolves once it listens. */
export function startReceiverProcess(input: {
  pki: TestPki;
  port: number;
  transferId: string;
  targetPath: string;
  keepServing?: boolean;
}): Promise<ReceiverProcess> {
  const { pki } = input;
  const config = {
    caPath: pki.receiverFiles.caPath,
    certPath: pki.receiverFiles.certPath,
    keyPath: pki.receiverFiles.keyPath,
    port: input.port,
    transferId: input.transferId,
    targetPath: input.targetPath,
    journalBatchChunks: 16,
    keepServing: input.keepServing ?? false,
  };
  const child = spawn(
    process.execPath,
    [
      '--import',
      pathToFileURL(require.resolve('tsx')).href,
      path.join(__dirname, 'receiver-process.ts'),
      JSON.stringify(config),
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
  let out = '';
  let onLine: ((line: string) => void)[] = [];
  child.stdout?.on('data', (d: Buffer) => {
    out += d.toString();
    let nl;
    while ((nl = out.indexOf('\n')) >= 0) {
      const line = out.slice(0, nl);
      out = out.slice(nl + 1);
      for (const f of onLine) f(line);
    }
  });
  const done = new Promise<string>((resolve, reject) => {
    onLine.push((line) => {
      if (line.startsWith('done ')) resolve(line.slice(5));
    });
    child.on('exit', (code, signal) => reject(new Error(`receiver exited ${code ?? signal}: ${stderr}`)));
  });
  done.catch(() => undefined);
  return new Promise((resolve, reject) => {
    onLine.push((line) => {
      if (line.startsWith('listening ')) resolve({ child, port: Number(line.slice(10)), done });
    });
    child.on('exit', (code) => reject(new Error(`receiver exited ${code} before listening: ${stderr}`)));
  }).finally(() => {
    onLine = onLine.slice(0, 1);
  }) as Promise<ReceiverProcess>;
}

/** Chunk records in a journal file (lines after the header; a torn last line is not counted). */
export function journaledChunks(file: string): number {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch {
    return 0;
  }
  let count = 0;
  for (const line of text.split('\n').slice(1, -1)) {
    try {
      count += (JSON.parse(line) as unknown[]).length;
    } catch {
      break;
    }
  }
  return count;
}

/**
 * Blocks this thread until the journal holds `chunks` records or `timeoutMs` passes, and answers how many it holds:
 * for a progress callback that must act before the sender goes on (the receiver journals in its own process).
 */
export function waitForJournalSync(input: { file: string; chunks: number; timeoutMs: number }): number {
  const deadline = Date.now() + input.timeoutMs;
  const sleeper = new Int32Array(new SharedArrayBuffer(4));
  let count = journaledChunks(input.file);
  while (count < input.chunks && Date.now() < deadline) {
    Atomics.wait(sleeper, 0, 0, 20);
    count = journaledChunks(input.file);
  }
  return count;
}
