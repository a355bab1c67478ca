/**
 * A loopback TCP proxy for fault and latency tests: each accepted connection opens one to the target, and `pipe`
 * decides how bytes cross in each direction (delayed, altered, or as they are). Closing either side closes both.
 */
import net from 'node:net';

export type ProxyDirection = 'to-target' | 'to-client';

export interface TcpProxy {
  port: number;
  close(): Promise<void>;
}

export async function startTcpProxy(input: {
  targetPort: number;
  pipe: (from: net.Socket, to: net.Socket, direction: ProxyDirection) => void;
}): Promise<TcpProxy> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    const upstream = net.connect(input.targetPort, '127.0.0.1');
    sockets.add(client).add(upstream);
    input.pipe(client, upstream, 'to-target');
    input.pipe(upstream, client, 'to-client');
    const close = (): void => {
      client.destroy();
      upstream.destroy();
    };
    client.on('error', close).on('close', close);
    upstream.on('error', close).on('close', close);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as net.AddressInfo).port,
    close: () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => resolve());
      }),
  };
}
