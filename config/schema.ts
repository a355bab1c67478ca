/**
 * The one configuration schema. Every value NovaCron reads at start-up passes through here, so an invalid
 * setting is caught before any process binds a port or writes a row.
 */
import { z } from 'zod';
import { DEFAULT_MODE_THRESHOLDS } from '../domain/mode-thresholds';

export const SAFE_ID_PATTERN = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;

export const DWCP_MODES = ['datacenter', 'internet', 'hybrid'] as const;
export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;

const port = z.number().int().min(0).max(65535);

const retryPolicySchema = z.strictObject({
  maximumAttempts: z.number().int().min(1).max(100).default(5),
  initialIntervalMs: z.number().int().min(1).default(200),
  backoffCoefficient: z.number().min(1).max(10).default(2),
  maximumIntervalMs: z.number().int().min(1).default(5000),
});
export type RetryPolicyConfig = z.infer<typeof retryPolicySchema>;

const tlsFilesSchema = z.strictObject({
  caFile: z.string().min(1).optional(),
  certFile: z.string().min(1),
  keyFile: z.string().min(1),
  serverName: z.string().min(1).optional(),
});

/** JWTs from an identity provider, verified against its JWKS URL or one static public key. */
const oidcSchema = z
  .strictObject({
    issuer: z.string().min(1),
    audience: z.string().min(1),
    jwksUrl: z.url({ protocol: /^https?$/ }).optional(),
    publicKeyFile: z.string().min(1).optional(),
    /** Asymmetric algorithms only: the API holds no shared secret, and `none` is never accepted. */
    algorithms: z
      .array(z.enum(['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512', 'EdDSA']))
      .min(1)
      .default(['RS256', 'ES256', 'EdDSA']),
    /** A dot path into the claims (`realm_access.roles`); its value is a role name or a list of them. */
    rolesClaim: z.string().min(1).default('roles'),
    clockToleranceSeconds: z.number().int().min(0).max(300).default(30),
  })
  .refine((o) => (o.jwksUrl === undefined) !== (o.publicKeyFile === undefined), {
    message: 'set exactly one of jwksUrl and publicKeyFile',
  });

export const configSchema = z.strictObject({
  system: z
    .strictObject({
      nodeId: z
        .string()
        .regex(SAFE_ID_PATTERN, 'must be lowercase letters, digits and dashes (at most 63)')
        .default('novacron-1'),
      dataDir: z.string().min(1).default('.novacron/data'),
      logLevel: z.enum(LOG_LEVELS).default('info'),
      profile: z.enum(DWCP_MODES).default('datacenter'),
      minResources: z
        .strictObject({
          cpus: z.number().int().min(1).default(1),
          memoryMib: z.number().int().min(64).default(1024),
          diskFreeMib: z.number().int().min(16).default(1024),
        })
        .prefault({}),
    })
    .prefault({}),
  api: z
    .strictObject({
      host: z.string().min(1).default('127.0.0.1'),
      port: port.default(8080),
      bodyLimitBytes: z
        .number()
        .int()
        .min(1024)
        .max(64 * 1024 * 1024)
        .default(1024 * 1024),
      tls: tlsFilesSchema.optional(),
    })
    .prefault({}),
  temporal: z
    .strictObject({
      address: z.string().min(1).optional(),
      namespace: z.string().min(1).default('default'),
      taskQueue: z.string().min(1).default('novacron-control'),
      tls: tlsFilesSchema.optional(),
      embedded: z
        .strictObject({
          port: port.default(7233),
          uiPort: port.default(8233),
        })
        .prefault({}),
    })
    .prefault({}),
  storage: z
    .strictObject({
      databaseUrl: z.string().min(1).optional(),
      poolSize: z.number().int().min(1).max(200).default(10),
      embedded: z
        .strictObject({
          port: port.default(55432),
        })
        .prefault({}),
    })
    .prefault({}),
  dwcp: z
    .strictObject({
      mode: z.enum(['auto', ...DWCP_MODES]).default('auto'),
      transport: z
        .strictObject({
          /** Caps each image transfer's wire rate, so replication leaves room for guests' traffic. Unset: no cap. */
          rateLimitMbps: z.number().positive().max(1_000_000).optional(),
        })
        .prefault({}),
      compression: z
        .strictObject({
          algorithm: z.enum(['zstd', 'none']).default('zstd'),
          level: z.union([z.literal('auto'), z.number().int().min(-7).max(22)]).default('auto'),
        })
        .prefault({}),
      /** Host leases in PostgreSQL with fencing tokens; there is no vote among hosts, so no quorum setting yet. */
      consensus: z
        .strictObject({
          leaseTtlSeconds: z.number().int().min(1).max(3600).default(15),
        })
        .prefault({}),
    })
    .prefault({}),
  /**
   * Where DWCP's mode detection draws its lines (classifyMode): a probed link is datacenter below
   * datacenterMaxRttMs and above datacenterMinBandwidthMbps, internet above internetMinRttMs or below that
   * bandwidth, hybrid in between. The host agents apply them to every probe and transfer; `dwcp.mode` other than
   * `auto` skips detection.
   */
  network: z
    .strictObject({
      datacenterMaxRttMs: z.number().positive().default(DEFAULT_MODE_THRESHOLDS.datacenterMaxRttMs),
      internetMinRttMs: z.number().positive().default(DEFAULT_MODE_THRESHOLDS.internetMinRttMs),
      datacenterMinBandwidthMbps: z.number().positive().default(DEFAULT_MODE_THRESHOLDS.datacenterMinBandwidthMbps),
    })
    .refine((n) => n.internetMinRttMs >= n.datacenterMaxRttMs, {
      message: 'internetMinRttMs must be at least datacenterMaxRttMs',
      path: ['internetMinRttMs'],
    })
    .prefault({}),
  monitoring: z
    .strictObject({
      workerMetricsPort: port.default(9464),
    })
    .prefault({}),
  security: z
    .strictObject({
      redactPaths: z.array(z.string().min(1)).default([
        'req.headers.authorization',
        'req.headers.cookie',
        '*.headers.authorization',
        '*.headers.cookie',
        // `*.x` matches x one level down only, so top-level fields are listed on their own.
        'password',
        'token',
        'secret',
        '*.password',
        '*.token',
        '*.secret',
        '*.databaseUrl',
      ]),
      /** Per token (or JWT subject): a bucket of `burst` requests refilled at `refillPerSecond`. */
      rateLimit: z
        .strictObject({
          burst: z.number().int().min(1).max(1_000_000).default(300),
          refillPerSecond: z.number().positive().max(1_000_000).default(50),
        })
        .prefault({}),
      oidc: oidcSchema.optional(),
    })
    .prefault({}),
  clusterInit: z
    .strictObject({
      retry: retryPolicySchema.prefault({}),
      componentTimeoutMs: z.number().int().min(100).default(30_000),
      disabledComponents: z.array(z.string().min(1)).default([]),
    })
    .prefault({}),
  /** Host liveness, inventory sync (ASS) and drift handling, read by the control worker and the host agents. */
  fleet: z
    .strictObject({
      /** How often an agent renews its host lease; the TTL is dwcp.consensus.leaseTtlSeconds. */
      heartbeatIntervalMs: z.number().int().min(100).default(2000),
      /** How often the fleet monitor expires leases and compares inventory. */
      monitorIntervalMs: z.number().int().min(100).default(1000),
      /** Drift must be recorded within this long of libvirt changing, per mode; agents report at a quarter of it. */
      stalenessBoundMs: z
        .strictObject({
          datacenter: z.number().int().min(400).default(5000),
          hybrid: z.number().int().min(400).default(15_000),
          internet: z.number().int().min(400).default(60_000),
        })
        .prefault({}),
      /** `alert` records drift only; `repair` also starts or stops a guest to match what NovaCron recorded. */
      driftPolicy: z.enum(['alert', 'repair']).default('alert'),
      /** Placement filter: vCPUs a host may hand out per physical CPU. */
      cpuOvercommit: z.number().min(1).max(32).default(4),
      /** Placement filter: host memory kept for the hypervisor itself. */
      memoryReserveMib: z.number().int().min(0).default(256),
    })
    .prefault({}),
  /** The host agent's own settings (`NOVACRON_AGENT_*`); only workers/host-agent.ts reads them. */
  agent: z
    .strictObject({
      hostId: z.string().regex(SAFE_ID_PATTERN, 'must be lowercase letters, digits and dashes (at most 63)').optional(),
      libvirtUri: z.string().min(1).default('qemu:///system'),
      /** The address the control plane and peers reach this host at. */
      address: z.string().min(1).default('127.0.0.1'),
      region: z.string().regex(SAFE_ID_PATTERN).default('local'),
      zone: z.string().regex(SAFE_ID_PATTERN).default('local-a'),
      /** Guest disks live under here; defaults to <dataDir>/images/<hostId>. */
      imageRoot: z.string().min(1).optional(),
      /** The DWCP receiver's port (images and migration streams from peers); 0 picks a free one. */
      dwcpPort: port.default(7480),
      dwcpListenHost: z.string().min(1).default('0.0.0.0'),
      /** The agent's Prometheus `/metrics`; 0 picks a free port, which the agent logs. */
      metricsPort: port.default(9465),
      metricsListenHost: z.string().min(1).default('0.0.0.0'),
      /**
       * Holds ca/ca.crt and <hostId>.crt/.key, as `novacron certs` writes them. Defaults to <dataDir>/pki; a missing
       * host certificate is issued from ca/ca.key when that is present (a development fleet on one machine).
       */
      pkiDir: z.string().min(1).optional(),
      /**
       * Storage pools this host sees besides `local`, by name: the directory where it mounts each one. Every host of
       * a pool must see the same files at the same path (qcow2 overlays name their base by path).
       */
      storagePools: z
        .record(z.string().regex(SAFE_ID_PATTERN, 'must be a pool name'), z.string().regex(/^\//, 'must be absolute'))
        .default({})
        .refine((pools) => !('local' in pools), "local is every host's own image root and cannot be declared"),
      /** The address peers send migration streams to (QEMU listens there); defaults to agent.address. */
      migrationAddress: z.string().min(1).optional(),
      /**
       * The libvirt URI peers' daemons use to reach this host's libvirtd (qemu+tcp://… or qemu+tls://…), for
       * peer-to-peer migration. Unset: migrations to this host are managed direct, driven by its agent.
       */
      peerLibvirtUri: z.string().min(1).optional(),
      /**
       * `auto` picks KVM only when /dev/kvm opens and the CPU has VMX or SVM; `qemu` forces TCG, `kvm` insists on KVM.
       */
      domainType: z.enum(['auto', 'kvm', 'qemu']).default('auto'),
    })
    .prefault({}),
  /** Live migration: per-host concurrency, as Nova's max_concurrent_live_migrations, and how jobs are watched. */
  migration: z
    .strictObject({
      /** Concurrent outgoing migrations per host; more wait their turn (Nova's default is 1). */
      maxOutgoingPerHost: z.number().int().min(1).max(64).default(2),
      maxIncomingPerHost: z.number().int().min(1).max(64).default(2),
      /** How often the workflow samples libvirt's job statistics while a migration runs. */
      pollIntervalMs: z.number().int().min(100).max(60_000).default(1000),
      /** How long domdirtyrate-calc measures before the plan is made. */
      dirtyRateSeconds: z.number().int().min(1).max(60).default(1),
    })
    .prefault({}),
  /**
   * Host failover (hostMonitor / failoverHost). A host is suspect once its lease (dwcp.consensus.leaseTtlSeconds)
   * has expired; after `graceMs` more, witnesses (peer agents) probe it and sign their votes; a confirmed host is
   * fenced and its HA guests restart elsewhere. Agents stop their own guests `selfFenceMarginMs` before their lease
   * could expire, so a guest never outlives the lease that lets it run.
   */
  failover: z
    .strictObject({
      /** `false` keeps suspicion and alerts but never fences or restarts. */
      enabled: z.boolean().default(true),
      /** Time after the lease's expiry before witnesses are asked: a brief hiccup ends before it. */
      graceMs: z.number().int().min(0).max(600_000).default(2000),
      /** More than this share of the fleet suspect at once withholds automatic failover (Kubernetes: 0.55). */
      stormThreshold: z.number().gt(0).max(1).default(0.55),
      /** How many peers are asked to witness; a majority must confirm (2f+1 of 3f+1 in internet mode). */
      witnesses: z.number().int().min(1).max(31).default(3),
      /** How long a witness tries the suspect's agent and libvirtd before it reports them unreachable. */
      witnessProbeTimeoutMs: z.number().int().min(100).max(60_000).default(1500),
      /** A signed vote older than this, or dated this far in the future, is refused as stale. */
      voteMaxAgeMs: z.number().int().min(1000).max(600_000).default(30_000),
      /** How long before its lease could expire an agent that cannot renew it stops its guests. */
      selfFenceMarginMs: z.number().int().min(100).max(600_000).default(3000),
      /**
       * Runs the host watchdog beside each agent: a separate process that stops the host's guests at the same
       * deadline when the agent itself dies or hangs. `false` leaves only the agent's own timer.
       */
      watchdog: z.boolean().default(true),
    })
    .prefault({}),
});

export type NovacronConfig = z.infer<typeof configSchema>;
export type NovacronConfigInput = z.input<typeof configSchema>;
export type DwcpMode = (typeof DWCP_MODES)[number];

/** The inventory staleness bound for the mode in force: an explicit dwcp.mode, else the profile's. */
export function inventoryStalenessBoundMs(config: Pick<NovacronConfig, 'dwcp' | 'system' | 'fleet'>): number {
  const mode = config.dwcp.mode === 'auto' ? config.system.profile : config.dwcp.mode;
  return config.fleet.stalenessBoundMs[mode];
}
