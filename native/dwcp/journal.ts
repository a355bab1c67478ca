/**
 * The receiver's progress journal, kept next to the partial target. Line 1 is a JSON header naming the transfer and
 * its manifest; each later line is a JSON array of [chunkIndex, offset] pairs that are on disk. Records are appended
 * in batches, and each batch is written only after the target file's data has been fsync'd, so the journal never
 * claims a chunk that a power loss could take back. A torn last line (crash mid-append) is ignored and cut off.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { z } from 'zod';

/**
 * v2: the receiver opens the journal when the sender says hello, before any of the manifest has arrived, so the
 * header names what is known then (transfer, size, chunking). Whether the journaled chunks still hold the content
 * the sender now describes is settled at END: a resumed transfer re-reads the whole result and checks its sha256.
 */
const HeaderSchema = z.object({
  v: z.literal(2),
  transferId: z.string(),
  size: z.number().int().nonnegative(),
  chunking: z.string(),
});
export type JournalHeader = Omit<z.infer<typeof HeaderSchema>, 'v'>;

const RecordSchema = z.array(z.tuple([z.number().int().nonnegative(), z.number().int().nonnegative()]));

export class TransferJournal {
  private readonly handle: FileHandle;
  private readonly data: FileHandle;
  private pending: [number, number][] = [];
  private flushing: Promise<void> = Promise.resolve();
  private inProgress = 0;

  private constructor(handle: FileHandle, data: FileHandle) {
    this.handle = handle;
    this.data = data;
  }

  /**
   * Opens the journal at `path`. When it exists and its header matches, the chunks it records are returned as
   * done; otherwise (no journal, another transfer, another manifest) it starts empty and `reset` is true, telling
   * the caller that the partial target's content cannot be trusted.
   */
  static async open(input: {
    path: string;
    header: JournalHeader;
    data: FileHandle;
  }): Promise<{ journal: TransferJournal; done: Map<number, number>; reset: boolean }> {
    const done = new Map<number, number>();
    let handle: FileHandle | undefined;
    let reset = true;
    try {
      handle = await open(input.path, 'r+');
      const text = (await handle.readFile()).toString('utf8');
      const lines = text.split('\n');
      const headerLine = lines[0] ?? '';
      const header = HeaderSchema.safeParse(safeJson(headerLine));
      if (header.success && sameHeader(header.data, input.header) && lines.length > 1) {
        reset = false;
        let validBytes = Buffer.byteLength(headerLine) + 1;
        // The last element is whatever follows the final newline: empty, or a torn record.
        for (const line of lines.slice(1, -1)) {
          const record = RecordSchema.safeParse(safeJson(line));
          if (!record.success) break;
          for (const [index, offset] of record.data) done.set(index, offset);
          validBytes += Buffer.byteLength(line) + 1;
        }
        await handle.truncate(validBytes);
      }
    } catch (err) {
      if (!(typeof err === 'object' && err !== null && 'code' in err && err.code === 'ENOENT')) throw err;
    }
    if (reset) {
      await handle?.close();
      handle = await open(input.path, 'w+');
      await handle.write(`${JSON.stringify({ v: 2, ...input.header })}\n`);
      await handle.sync();
    }
    if (handle === undefined) throw new Error('journal handle missing');
    return { journal: new TransferJournal(handle, input.data), done, reset };
  }

  get pendingCount(): number {
    return this.pending.length;
  }

  /** True while a flush is running; callers batching on size skip a flush then instead of queueing another. */
  get busy(): boolean {
    return this.inProgress > 0;
  }

  record(index: number, offset: number): void {
    this.pending.push([index, offset]);
  }

  /** Makes every recorded chunk durable: data first, then the journal lines that point at it. */
  flush(): Promise<void> {
    this.inProgress++;
    this.flushing = this.flushing
      .then(async () => {
        if (this.pending.length === 0) return;
        const batch = this.pending;
        this.pending = [];
        await this.data.datasync();
        const stat = await this.handle.stat();
        await this.handle.write(`${JSON.stringify(batch)}\n`, stat.size);
        await this.handle.sync();
      })
      .finally(() => {
        this.inProgress--;
      });
    return this.flushing;
  }

  async close(): Promise<void> {
    await this.flushing.catch(() => undefined);
    await this.handle.close();
  }
}

function safeJson(line: string): unknown {
  try {
    return JSON.parse(line);
  } catch {
    return undefined;
  }
}

function sameHeader(a: JournalHeader, b: JournalHeader): boolean {
  return a.transferId === b.transferId && a.size === b.size && a.chunking === b.chunking;
}
