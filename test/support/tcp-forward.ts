/**
 * A TCP forwarder from an address harness hosts reach (the bridge of a networked harness) to a service that listens
 * on 127.0.0.1 only, as `npm test`'s and the benchmarks' PostgreSQL and Temporal do. Inside a host's network
 * namespace 127.0.0.1 is that host's own loopback, so an agent running there reaches the machine's services only
 * through this. PostgreSQL sees the forwarder's loopback connection, which its pg_hba already admits.
 */
import net from 'node:net';

export interface TcpForward {
  /** Where the forwarder listens: `host:port`. */
  address: string;
  host: string;
  port: number;
  close(): Promise<void>;
}

export async function forwardTcp(input: {
  listenHost: string;
  target: { host: string; port: number };
}): Promise<TcpForward> {
  const open = new Set<net.Socket>();
  const server = net.createServer((inbound) => {
    const outbound = net.connect({ host: input.target.host, port: input.target.port });
    for (const socket of [inbound, outbound]) {
      open.add(socket);
      socket.setNoDelay(true);
      socket.once('close', () => open.delete(socket));
      // Either side failing ends both: a half-open pair would leave a client waiting on nothing.
      socket.once('error', () => {
        inbound.destroy();
        outbound.destroy();
      });
    }
    inbound.pipe(outbound);
    outbound.pipe(inbound);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, input.listenHost, () => resolve());
  });
  const { port } = server.address() as net.AddressInfo;
  return {
    address: `${input.listenHost}:${port}`,
    host: input.listenHost,
    port,
    close: () =>
      new Promise<void>((resolve) => {
        for (const socket of open) socket.destroy();
        server.close(() => resolve());
      }),
  };
}

/** `host:port` or a URL's authority, split; IPv6 literals come bracketed. */
export function parseHostPort(address: string): { host: string; port: number } {
  const match = /^\[?([^\]]+?)\]?:(\d+)$/.exec(address);
  if (!match) throw new Error(`expected host:port, got ${address}`);
  return { host: match[1]!, port: Number(match[2]) };
}
