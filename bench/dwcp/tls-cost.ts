/**
 * What carrying bytes through Node's sockets costs on this machine, apart from DWCP's own work: N MiB (1 GiB by
 * default) through a loopback socket pair in one process, as plain TCP and as mutual TLS 1.3 with each AES-GCM suite
 * (the first is what DWCP negotiates: Node's default order puts it first). The sending end runs on the main thread
 * and the receiving end in a worker thread, and each times its own thread, so the figures are per end. Node 20 has
 * no per-thread CPU call, so the threads read /proc/thread-self/schedstat (Linux only, as the DWCP benchmark is).
 * Kernel loopback work is charged to whichever thread makes the system call, mostly the sending one.
 *
 * node --import tsx bench/dwcp/tls-cost.ts [--mib 1024] [--write-kib 128]
 */
import { once } from 'node:events';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import { loadavg, tmpdir } from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import { parseArgs } from 'node:util';
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads';
import { createCertificateAuthority, issueHostCertificate, readTlsMaterial } from '../../native/dwcp/certs';
import { threadCpuSeconds } from './thread-cpu';

/**
 * One copy: plain TCP, or TLS with one suite (undefined: Node's default list, as native/dwcp/connection.ts uses).
 * PEM strings, because workerData clones a Buffer into a bare Uint8Array.
 */
interface CopyCase {
  tls: boolean;
  suite: string | undefined;
  bytes: number;
  pem: { ca: string; cert: string; key: string };
}

interface ReceiverReport {
  cpuSeconds: number;
  cipher: string | undefined;
}

const CASES: { tls: boolean; suite: string | undefined }[] = [
  { tls: false, suite: undefined },
  { tls: true, suite: undefined },
  { tls: true, suite: 'TLS_AES_256_GCM_SHA384' },
  { tls: true, suite: 'TLS_AES_128_GCM_SHA256' },
];

/** What both ends set: the certificate material, TLS 1.3 only, and the suite under test. */
function tlsOptions(c: CopyCase): Pick<tls.ConnectionOptions, 'ca' | 'cert' | 'key' | 'minVersion' | 'ciphers'> {
  return { ...c.pem, minVersion: 'TLSv1.3', ...(c.suite === undefined ? {} : { ciphers: c.suite }) };
}

/** The worker's side: accepts one connection, reads `bytes` from it, and reports its own thread's CPU. */
function receive(c: CopyCase): void {
  const port = parentPort;
  if (port === null) throw new Error('receive runs in a worker thread');
  const serve = (socket: net.Socket, cipher: string | undefined): void => {
    const from = threadCpuSeconds();
    let got = 0;
    socket.on('data', (data: Buffer) => {
      got += data.length;
      if (got < c.bytes) return;
      const report: ReceiverReport = { cpuSeconds: threadCpuSeconds() - from, cipher };
      port.postMessage(report);
      socket.destroy();
      server.close();
    });
  };
  const server = !c.tls
    ? net.createServer((socket) => serve(socket, undefined))
    : tls.createServer({ ...tlsOptions(c), requestCert: true, rejectUnauthorized: true }, (socket) =>
        serve(socket, socket.getCipher().name),
      );
  server.listen(0, '127.0.0.1', () => port.postMessage({ port: (server.address() as net.AddressInfo).port }));
}

async function connect(c: CopyCase, port: number): Promise<net.Socket> {
  const socket = !c.tls
    ? net.connect({ host: '127.0.0.1', port })
    : tls.connect({ ...tlsOptions(c), host: '127.0.0.1', port });
  await once(socket, c.tls ? 'secureConnect' : 'connect');
  socket.setNoDelay(true);
  return socket;
}

/** One copy: the worker listens, this thread connects and writes, both time their own CPU after the handshake. */
async function copy(input: { c: CopyCase; writeBytes: number }) {
  const { c } = input;
  // Workers do not inherit tsx's loader hooks: register them (tsx/cjs) before requiring this file.
  const worker = new Worker(
    `require(${JSON.stringify(require.resolve('tsx/cjs'))}); require(${JSON.stringify(__filename)});`,
    {
      eval: true,
      workerData: c,
    },
  );
  try {
    const [{ port }] = (await once(worker, 'message')) as [{ port: number }];
    const reported = once(worker, 'message') as Promise<[ReceiverReport]>;
    const socket = await connect(c, port);
    const block = randomBytes(input.writeBytes);
    const process0 = process.cpuUsage();
    const from = threadCpuSeconds();
    const started = performance.now();
    for (let sent = 0; sent < c.bytes; sent += block.length) {
      if (!socket.write(block)) await once(socket, 'drain');
    }
    const [receiver] = await reported;
    const seconds = (performance.now() - started) / 1000;
    const sender = threadCpuSeconds() - from;
    const used = process.cpuUsage(process0);
    socket.destroy();
    const gb = c.bytes / 1e9;
    return {
      transport: c.tls ? `TLS 1.3 ${c.suite === undefined ? 'default: ' : ''}${receiver.cipher ?? '?'}` : 'TCP',
      MBps: c.bytes / 1e6 / seconds,
      senderCpuPerGB: sender / gb,
      receiverCpuPerGB: receiver.cpuSeconds / gb,
      otherThreadsCpuPerGB: ((used.user + used.system) / 1e6 - sender - receiver.cpuSeconds) / gb,
    };
  } finally {
    await worker.terminate();
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: { mib: { type: 'string', default: '1024' }, 'write-kib': { type: 'string', default: '128' } },
  });
  const bytes = Number(values.mib) * 1024 * 1024;
  const writeBytes = Number(values['write-kib']) * 1024;
  if (!(bytes > 0 && writeBytes > 0)) throw new Error('--mib and --write-kib must be positive numbers');
  const dir = await mkdtemp(path.join(tmpdir(), 'dwcp-tls-cost-'));
  try {
    const caDir = path.join(dir, 'ca');
    await createCertificateAuthority({ dir: caDir });
    const certificate = await issueHostCertificate({ caDir, hostId: 'tls-cost', dir, ips: ['127.0.0.1'] });
    const material = await readTlsMaterial({ certificate });
    const pem = { ca: material.ca.toString(), cert: material.cert.toString(), key: material.key.toString() };
    const load = loadavg();
    const rows = [];
    for (const c of CASES) rows.push(await copy({ c: { ...c, bytes, pem }, writeBytes }));
    const fmt = (n: number): string => n.toFixed(2);
    process.stdout.write(
      `${values.mib} MiB in ${values['write-kib']} KiB writes, load ${load.map(fmt).join(' ')} → ${loadavg().map(fmt).join(' ')}\n` +
        '| transport | MB/s | sender CPU s/GB | receiver CPU s/GB | other threads CPU s/GB |\n| --- | ---: | ---: | ---: | ---: |\n' +
        rows
          .map(
            (r) =>
              `| ${r.transport} | ${r.MBps.toFixed(0)} | ${fmt(r.senderCpuPerGB)} | ${fmt(r.receiverCpuPerGB)} | ${fmt(r.otherThreadsCpuPerGB)} |`,
          )
          .join('\n') +
        '\n',
    );
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

if (isMainThread) {
  main().then(
    () => process.exit(0),
    (err: unknown) => {
      process.stderr.write(`${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
      process.exit(1);
    },
  );
} else {
  receive(workerData as CopyCase);
}
