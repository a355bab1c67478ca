/**
 * A stand-in for the API on loopback, for CLI tests: it records what the CLI sends and answers what the test set,
 * so a test checks the request a command makes and what the command prints of the answer, without a server.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';

export interface RecordedRequest {
  method: string;
  url: string;
  headers: http.IncomingHttpHeaders;
  body: unknown;
}

export interface StandInApi {
  /** The base URL to pass as --api. */
  url: string;
  /** Every request since the last reset(), in order. */
  readonly requests: RecordedRequest[];
  /** What every request gets until the next answer(). */
  answer(status: number, body: unknown): void;
  /** Forgets the requests; the answer stays. */
  reset(): void;
  close(): Promise<void>;
}

export async function startStandInApi(): Promise<StandInApi> {
  const requests: RecordedRequest[] = [];
  let current: { status: number; body: unknown } = { status: 500, body: { message: 'no answer set' } };
  const server = http.createServer((req, res) => {
    let text = '';
    req.on('data', (chunk: Buffer) => (text += chunk.toString()));
    req.on('end', () => {
      requests.push({
        method: req.method!,
        url: req.url!,
        headers: req.headers,
        body: text ? JSON.parse(text) : undefined,
      });
      res.writeHead(current.status, { 'content-type': 'application/json' });
      res.end(JSON.stringify(current.body));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    answer: (status, body) => {
      current = { status, body };
    },
    reset: () => {
      requests.length = 0;
    },
    close: () => new Promise<void>((resolve, reject) => server.close((err) => (err ? reject(err) : resolve()))),
  };
}
