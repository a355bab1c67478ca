/**
 * A DWCP receiver in its own process, so tests can SIGKILL it mid-transfer and start it again. Reads its
 * configuration as JSON from argv[2], prints `listening <port>` when ready and `done <sha256>` on success (`done
 * digest:<manifest digest>` for a send without the whole-file sha256). With `keepServing` it then goes on answering
 * senders of the finished transfer until it is killed.
 */
import { readFile } from 'node:fs/promises';
import { z } from 'zod';
import { DwcpReceiver } from '../receiver';

const ConfigSchema = z.object({
  caPath: z.string(),
  certPath: z.string(),
  keyPath: z.string(),
  port: z.number().int().nonnegative(),
  transferId: z.string(),
  targetPath: z.string(),
  journalBatchChunks: z.number().int().positive(),
  keepServing: z.boolean().default(false),
});

async function main(): Promise<void> {
  const config = ConfigSchema.parse(JSON.parse(process.argv[2] ?? '{}'));
  const tls = {
    ca: await readFile(config.caPath),
    cert: await readFile(config.certPath),
    key: await readFile(config.keyPath),
  };
  const receiver = await DwcpReceiver.start({
    tls,
    host: '127.0.0.1',
    port: config.port,
    journalBatchChunks: config.journalBatchChunks,
    journalIntervalMs: 50,
  });
  const result = receiver.expectFile({ transferId: config.transferId, targetPath: config.targetPath });
  process.stdout.write(`listening ${receiver.port}\n`);
  const { sha256, manifestDigest } = await result;
  process.stdout.write(`done ${sha256 ?? `digest:${manifestDigest}`}\n`);
  if (!config.keepServing) await receiver.close();
}

main().catch((err: unknown) => {
  process.stderr.write(`${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(1);
});
