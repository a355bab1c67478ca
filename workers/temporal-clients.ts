/** Connection settings for Temporal, shared by the API, the workers and the CLI: one place reads TLS files. */
import { readFileSync } from 'node:fs';
import type { NovacronConfig } from '../config/schema';

export interface TemporalTarget {
  address: string;
  namespace: string;
  tls?: {
    serverNameOverride?: string;
    serverRootCACertificate?: Buffer;
    clientCertPair: { crt: Buffer; key: Buffer };
  };
}

export function temporalTarget(config: NovacronConfig): TemporalTarget {
  const { temporal } = config;
  const address = temporal.address ?? `127.0.0.1:${temporal.embedded.port}`;
  if (!temporal.tls) return { address, namespace: temporal.namespace };
  return {
    address,
    namespace: temporal.namespace,
    tls: {
      ...(temporal.tls.serverName ? { serverNameOverride: temporal.tls.serverName } : {}),
      ...(temporal.tls.caFile ? { serverRootCACertificate: readFileSync(temporal.tls.caFile) } : {}),
      clientCertPair: { crt: readFileSync(temporal.tls.certFile), key: readFileSync(temporal.tls.keyFile) },
    },
  };
}

/**
 * Retries a connection until the deadline: a worker or API started beside its Temporal server (npm start, compose)
 * waits for it instead of crash-looping.
 */
export async function connectWithRetry<T>(input: {
  what: string;
  connect: () => Promise<T>;
  timeoutMs: number;
  onWait?: (message: string) => void;
}): Promise<T> {
  const deadline = Date.now() + input.timeoutMs;
  let delayMs = 100;
  let warned = false;
  for (;;) {
    try {
      return await input.connect();
    } catch (err) {
      if (Date.now() + delayMs > deadline) {
        throw new Error(`cannot reach ${input.what} after ${input.timeoutMs} ms: ${(err as Error).message}`, {
          cause: err,
        });
      }
      if (!warned) input.onWait?.(`waiting for ${input.what}: ${(err as Error).message.split('\n')[0]}`);
      warned = true;
      await new Promise((r) => setTimeout(r, delayMs));
      delayMs = Math.min(2000, delayMs * 2);
    }
  }
}
