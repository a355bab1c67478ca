/**
 * Connection settings for Temporal, shared by the API, the workers and the CLI: one place reads TLS files. Failures
 * are told apart by their gRPC status (`@grpc/grpc-js`'s own enum, the one Temporal's client sets), not by number.
 */
import { status } from '@grpc/grpc-js';
import { isGrpcServiceError } from '@temporalio/client';
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
 * The gRPC status a Temporal call failed with, on the error or along its causes: the client wraps what the server
 * answered in a ServiceError. Undefined when no server answered (refused, unresolvable, a transport error).
 */
export function grpcStatusOf(err: unknown): status | undefined {
  let current: unknown = err;
  // A cause chain is short; the bound only guards against a cycle.
  for (let depth = 0; depth < 8 && current instanceof Error; depth++) {
    if (isGrpcServiceError(current)) return current.code;
    current = current.cause;
  }
  return undefined;
}

/** The Temporal frontend is unreachable or not serving yet: worth retrying, and a 503 for API clients. */
export function isTemporalUnavailable(err: unknown): boolean {
  return grpcStatusOf(err) === status.UNAVAILABLE;
}

/** What a starting or overloaded frontend answers. Any other status (denied, unauthenticated) waiting will not fix. */
const TRANSIENT_STATUSES: ReadonlySet<status> = new Set([
  status.UNAVAILABLE,
  status.DEADLINE_EXCEEDED,
  status.RESOURCE_EXHAUSTED,
  status.ABORTED,
]);

/**
 * Retries a connection until the deadline: a worker or API started beside its Temporal server (npm start, compose)
 * waits for it instead of crash-looping. A server that answers with a status no wait will change (bad credentials,
 * permission denied) fails at once instead of after the whole timeout.
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
      const code = grpcStatusOf(err);
      if (code !== undefined && !TRANSIENT_STATUSES.has(code)) {
        throw new Error(`${input.what} refused the connection (${status[code]}): ${(err as Error).message}`, {
          cause: err,
        });
      }
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
