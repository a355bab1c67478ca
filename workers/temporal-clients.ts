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
