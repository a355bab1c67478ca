/**
 * The copies the DWCP benchmark compares, as run specs for one link: a raw TCP stream (nc), `zstd -1 -T0 | nc`, an
 * rsync daemon (first copy and v1→v2 delta), and DWCP peers (bench/dwcp/peer.ts) with datacenter, internet and
 * probe-chosen ("auto") parameters. Also the PKI the DWCP peers use and the command line that starts a peer.
 */
import { randomUUID } from 'node:crypto';
import { rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { createCertificateAuthority, issueHostCertificate } from '../../native/dwcp/certs';
import { localChunkHashes, type ChunkHash } from '../../native/dwcp/chunk-hash';
import { chunkingParams } from '../../native/dwcp/chunking';
import { DwcpMode, MODE_PARAMETERS } from '../../native/dwcp/mode';
import type { DwcpDataset } from './dataset';
import type { RunSpec, Scenario } from './measure';
import { ADDR_A, ADDR_B, type Link } from './netns';

export const PEER = path.join(__dirname, 'peer.ts');

export interface Pki {
  caPath: string;
  receiver: { certPath: string; keyPath: string };
  sender: { certPath: string; keyPath: string };
}

export async function makePki(dir: string): Promise<Pki> {
  const caDir = path.join(dir, 'ca');
  const ca = await createCertificateAuthority({ dir: caDir });
  const receiver = await issueHostCertificate({
    caDir,
    hostId: 'bench-receiver',
    dir: path.join(dir, 'hosts'),
    ips: ['127.0.0.1', ADDR_B],
  });
  const sender = await issueHostCertificate({
    caDir,
    hostId: 'bench-sender',
    dir: path.join(dir, 'hosts'),
    ips: ['127.0.0.1', ADDR_A],
  });
  return { caPath: ca.certPath, receiver, sender };
}

export function nodeArgv(script: string, config: unknown): string[] {
  return [process.execPath, '--import', pathToFileURL(require.resolve('tsx')).href, script, JSON.stringify(config)];
}

export interface DwcpParams {
  streams: number;
  chunkAvgBytes: number;
  /** Offered to a receiver with no base (0 or absent: none). */
  firstCopyChunkBytes?: number;
  compressionLevel: number;
  maxInFlightChunks: number;
}

export interface LinkContext {
  link: Link;
  dataset: DwcpDataset;
  pki: Pki;
}

/** A DWCP peer's settings: the receiver's certificate for the roles that listen, the sender's for the others. */
export function peerConfig(ctx: LinkContext, role: string, extra: Record<string, unknown>): Record<string, unknown> {
  const listens = role === 'receive' || role === 'serve-probe';
  return {
    role,
    caPath: ctx.pki.caPath,
    certPath: listens ? ctx.pki.receiver.certPath : ctx.pki.sender.certPath,
    keyPath: listens ? ctx.pki.receiver.keyPath : ctx.pki.sender.keyPath,
    host: ctx.link.host,
    transferId: randomUUID(),
    streams: 1,
    chunkAvgBytes: 65536,
    compressionLevel: 1,
    maxInFlightChunks: 16,
    port: 0,
    path: ctx.dataset.v1Path,
    ...extra,
  };
}

/**
 * Every copy on one link, in the order one iteration runs them; each is made when it runs, on the next port.
 * `include` filters by tool and scenario; `auto` is what the link's probe and calibration chose.
 */
export function toolSpecs(input: {
  ctx: LinkContext;
  scratch: string;
  target: string;
  v1Sha: string;
  v2Sha: string;
  auto: DwcpParams;
  include: (tool: string, scenario: Scenario) => boolean;
  nextPort: () => number;
}): Array<() => Promise<RunSpec>> {
  const { ctx, scratch, target, v1Sha, v2Sha, auto } = input;
  const { link, dataset } = ctx;
  const specs: Array<() => Promise<RunSpec>> = [];
  const add = (tool: string, scenario: Scenario, make: (p: number) => Promise<RunSpec> | RunSpec): void => {
    if (input.include(tool, scenario)) specs.push(async () => make(input.nextPort()));
  };
  add('raw-tcp', 'first', (p) => ({
    link,
    tool: 'raw-tcp',
    scenario: 'first',
    port: p,
    receiver: ['bash', '-c', `exec nc -l ${link.host} ${p} > ${target}`],
    sender: ['bash', '-c', `exec nc -N ${link.host} ${p} < ${dataset.v1Path}`],
    target,
    expectedSha256: v1Sha,
  }));
  add('zstd-1-nc', 'first', (p) => ({
    link,
    tool: 'zstd-1-nc',
    scenario: 'first',
    port: p,
    receiver: ['bash', '-c', `nc -l ${link.host} ${p} | zstd -d -q -c > ${target}`],
    sender: ['bash', '-c', `zstd -1 -T0 -q -c ${dataset.v1Path} | nc -N ${link.host} ${p}`],
    target,
    expectedSha256: v1Sha,
  }));
  // rsync-fsync is the durable rsync: DWCP fsyncs the target before it answers END, plain rsync leaves writeback to
  // the kernel after it exits, so its wall and CPU seconds leave that work out. Goals stay judged against plain rsync.
  const rsyncVariants: Array<[tool: string, flags: string[]]> = [
    ['rsync', []],
    ['rsync-fsync', ['--fsync']],
  ];
  for (const [tool, flags] of rsyncVariants) {
    for (const scenario of ['first', 'delta'] as const) {
      add(tool, scenario, async (p) => {
        const conf = path.join(scratch, 'rsyncd.conf');
        const stopFile = path.join(scratch, 'rsync.stop');
        await rm(stopFile, { force: true });
        await writeFile(
          conf,
          `[bench]\npath = ${scratch}\nread only = false\nuse chroot = false\nuid = root\ngid = root\n`,
        );
        return {
          link,
          tool,
          scenario,
          port: p,
          receiver: [
            'bash',
            '-c',
            `rsync --daemon --no-detach --config=${conf} --address=${link.host} --port=${p} & pid=$!; ` +
              `while [ ! -e ${stopFile} ]; do sleep 0.05; done; kill $pid; wait $pid; true`,
          ],
          sender: [
            'rsync',
            '-S',
            '-I',
            '--no-whole-file',
            ...flags,
            scenario === 'first' ? dataset.v1Path : dataset.v2Path,
            `rsync://${link.host}:${p}/bench/target.img`,
          ],
          stopFile,
          target,
          expectedSha256: scenario === 'first' ? v1Sha : v2Sha,
        };
      });
    }
  }
  // datacenter-sha256: the datacenter row with sha256 chunk hashes, as between hosts where one lacks dwcp-native;
  // side by side with dwcp-datacenter, it prices the BLAKE3 choice (chunk-hash.ts) in the same run.
  const dwcpModes: [string, DwcpParams, ChunkHash[]?][] = [
    [DwcpMode.DATACENTER, MODE_PARAMETERS.datacenter],
    [`${DwcpMode.DATACENTER}-sha256`, MODE_PARAMETERS.datacenter, ['sha256']],
    [DwcpMode.INTERNET, MODE_PARAMETERS.internet],
    ['auto', auto],
  ];
  for (const [name, params, chunkHashes] of dwcpModes) {
    const scenarios: Scenario[] = name === 'auto' ? ['first', 'delta'] : ['first', 'delta', 'delta-warm'];
    for (const scenario of scenarios) {
      add(`dwcp-${name}`, scenario, (p) => {
        const transferId = randomUUID();
        const settings = {
          streams: params.streams,
          chunkAvgBytes: params.chunkAvgBytes,
          firstCopyChunkBytes: params.firstCopyChunkBytes ?? 0,
          compressionLevel: params.compressionLevel,
          maxInFlightChunks: params.maxInFlightChunks,
          // The copy is checked chunk by chunk and by its manifest digest, and the bench checks the target's
          // sha256 itself afterwards; the image library's extra whole-file sha256 is priced in docs/dwcp.md.
          wholeFileSha256: false,
          ...(chunkHashes !== undefined ? { chunkHashes } : {}),
        };
        return {
          link,
          tool: `dwcp-${name}`,
          scenario,
          port: p,
          receiver: nodeArgv(PEER, peerConfig(ctx, 'receive', { port: p, transferId, path: target })),
          sender: nodeArgv(
            PEER,
            peerConfig(ctx, 'send', {
              port: p,
              transferId,
              path: scenario === 'first' ? dataset.v1Path : dataset.v2Path,
              ...settings,
            }),
          ),
          target,
          expectedSha256: scenario === 'first' ? v1Sha : v2Sha,
          warmSender: true,
          ...(scenario === 'delta-warm'
            ? {
                warmChunking: chunkingParams({
                  avgBytes: params.chunkAvgBytes,
                  hash: chunkHashes?.[0] ?? localChunkHashes[0]!,
                }),
              }
            : {}),
        };
      });
    }
  }
  return specs;
}
