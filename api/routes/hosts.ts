/**
 * Hosts (registered by their agents), maintenance, failover reports and readmission of a fenced host, and the drift
 * found between libvirt and the store.
 */
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { Gauge } from 'prom-client';
import { z } from 'zod';
import { DRIFT_KINDS, listDrift, openDriftCounts } from '../../store/drift';
import { getFailover, listHostFailovers } from '../../store/failovers';
import { getHost, HOST_STATES, listHosts, readmitHost, setHostMaintenance, type HostRecord } from '../../store/hosts';
import { NotFoundError } from '../errors';
import { exactly } from '../exact-schema';
import { failoverListSchema, failoverReportSchema } from '../failover-schemas';
import { errorBodySchema, workflowIdSchema } from '../schemas';

const HOST_ID = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
export const hostIdSchema = z.string().regex(HOST_ID, 'must be a host id (lowercase letters, digits and dashes)');

export const hostSchema = exactly<HostRecord>()(
  z.object({
    id: z.string(),
    address: z.string(),
    libvirtUri: z.string(),
    cpus: z.number(),
    memoryMib: z.number(),
    diskMib: z.number(),
    labels: z.record(z.string(), z.string()),
    imageRoot: z.string(),
    storagePools: z
      .record(z.string(), z.string())
      .describe(
        "Shared storage pools the host mounts, name -> path on the host (`local`, its image root, is every host's)",
      ),
    migrationAddress: z.string().describe('Where QEMU on this host listens for incoming migration streams'),
    peerLibvirtUri: z
      .string()
      .optional()
      .describe("The URI other hosts' libvirtds reach this one by, for peer-to-peer migration"),
    dwcpEndpoint: z.string().optional(),
    witnessPublicKey: z
      .string()
      .optional()
      .describe(
        "Base64 of the raw 32-byte Ed25519 public key the host's agent signs its witness votes with; absent: it signs none",
      ),
    state: z
      .enum(HOST_STATES)
      .describe('`fenced`: a failover took its lease over; it stays fenced until an admin readmits it'),
    stateChangedAt: z.string(),
    registeredAt: z.string(),
    lease: z
      .object({ holder: z.string(), fencingToken: z.number(), expiresAt: z.string(), alive: z.boolean() })
      .optional(),
    inventory: z
      .object({ leaseToken: z.number(), seq: z.number(), observedAt: z.string(), domains: z.number() })
      .optional(),
    allocated: z.object({ vms: z.number(), vcpus: z.number(), memoryMib: z.number(), diskMib: z.number() }),
  }),
);

export const driftSchema = z.object({
  id: z.number(),
  hostId: z.string(),
  vmId: z.string().optional(),
  domainName: z.string(),
  kind: z.enum(DRIFT_KINDS),
  expected: z.string().optional(),
  actual: z.string().optional(),
  observedAt: z.string(),
  detectedAt: z.string(),
  resolvedAt: z.string().optional(),
  action: z.enum(['alerted', 'repairing']),
  repairWorkflowId: z.string().optional(),
});

export const hostListSchema = z.object({ hosts: z.array(hostSchema) });

export const hostRoutes: FastifyPluginAsyncZod = async (app) => {
  const { pool, metrics } = app;
  // Read from the store at scrape time, so every API replica reports the same numbers.
  new Gauge({
    name: 'novacron_drift_open',
    help: 'Open drift findings by kind',
    labelNames: ['kind'],
    registers: [metrics.registry],
    async collect() {
      const counts = await openDriftCounts(pool);
      for (const kind of DRIFT_KINDS) this.set({ kind }, counts[kind]);
    },
  });
  new Gauge({
    name: 'novacron_hosts',
    help: 'Registered hosts by state',
    labelNames: ['state'],
    registers: [metrics.registry],
    async collect() {
      const hosts = await listHosts(pool);
      for (const state of HOST_STATES) this.set({ state }, hosts.filter((h) => h.state === state).length);
    },
  });

  app.get(
    '/v1/hosts',
    {
      config: { role: 'viewer' },
      schema: {
        summary: 'Registered hosts with their lease, last inventory report and allocated capacity',
        tags: ['hosts'],
        response: { 200: hostListSchema },
      },
    },
    async () => ({ hosts: await listHosts(pool) }),
  );

  app.get(
    '/v1/hosts/:id',
    {
      config: { role: 'viewer' },
      schema: {
        summary: 'One host',
        tags: ['hosts'],
        params: z.strictObject({ id: hostIdSchema }),
        response: { 200: hostSchema, 404: errorBodySchema },
      },
    },
    async (request) => {
      const host = await getHost(pool, request.params.id);
      if (!host) throw new NotFoundError(`host ${request.params.id} does not exist`);
      return host;
    },
  );

  app.post(
    '/v1/hosts/:id/maintenance',
    {
      config: { role: 'admin' },
      schema: {
        summary: 'Maintenance on (placement skips the host) or off (up again if its agent holds the lease)',
        tags: ['hosts'],
        params: z.strictObject({ id: hostIdSchema }),
        body: z.strictObject({ enabled: z.boolean() }),
        response: { 200: hostSchema, 404: errorBodySchema },
      },
    },
    async (request) => {
      const host = await setHostMaintenance(pool, { hostId: request.params.id, enabled: request.body.enabled });
      if (!host) throw new NotFoundError(`host ${request.params.id} does not exist`);
      return host;
    },
  );

  app.get(
    '/v1/hosts/:id/failovers',
    {
      config: { role: 'viewer' },
      schema: {
        summary: "The host's failovers, newest first: suspicion, confirmation, fence and each VM's restart",
        tags: ['hosts'],
        params: z.strictObject({ id: hostIdSchema }),
        querystring: z.strictObject({ limit: z.coerce.number().int().min(1).max(100).default(20) }),
        response: { 200: failoverListSchema, 404: errorBodySchema },
      },
    },
    async (request) => {
      const { id } = request.params;
      // A report outlives its host, but a host that never existed is more likely a typo than a host with no history.
      if (!(await getHost(pool, id))) throw new NotFoundError(`host ${id} does not exist`);
      return { failovers: await listHostFailovers(pool, { hostId: id, limit: request.query.limit }) };
    },
  );

  app.get(
    '/v1/failovers/:id',
    {
      config: { role: 'viewer' },
      schema: {
        summary: 'One failover report',
        tags: ['hosts'],
        params: z.strictObject({ id: workflowIdSchema }),
        response: { 200: failoverReportSchema, 404: errorBodySchema },
      },
    },
    async (request) => {
      const report = await getFailover(pool, request.params.id);
      if (!report) throw new NotFoundError(`failover ${request.params.id} does not exist`);
      return report;
    },
  );

  app.post(
    '/v1/hosts/:id/readmit',
    {
      config: { role: 'admin' },
      schema: {
        summary:
          'Readmit a fenced host: up again only if its agent holds a live lease and its latest inventory shows no ' +
          'guest running that the store places on another host; 409 ReadmitRefused says what keeps it fenced',
        tags: ['hosts'],
        params: z.strictObject({ id: hostIdSchema }),
        response: { 200: hostSchema, 404: errorBodySchema, 409: errorBodySchema },
      },
    },
    async (request) => {
      const { id } = request.params;
      await readmitHost(pool, { hostId: id, by: request.principal?.actor ?? 'anonymous' });
      const host = await getHost(pool, id);
      if (!host) throw new NotFoundError(`host ${id} does not exist`);
      return host;
    },
  );

  app.get(
    '/v1/drift',
    {
      config: { role: 'viewer' },
      schema: {
        summary: 'Drift between what libvirt runs and what NovaCron recorded, newest first',
        tags: ['hosts'],
        querystring: z.strictObject({
          hostId: hostIdSchema.optional(),
          open: z.enum(['true', 'false']).optional(),
          limit: z.coerce.number().int().min(1).max(1000).default(100),
        }),
        response: { 200: z.object({ drift: z.array(driftSchema) }) },
      },
    },
    async (request) => {
      const { hostId, open, limit } = request.query;
      return {
        drift: await listDrift(pool, {
          limit,
          ...(hostId ? { hostId } : {}),
          ...(open ? { open: open === 'true' } : {}),
        }),
      };
    },
  );
};
