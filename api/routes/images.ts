/**
 * The image library: register an image file placed on a host, list images and their copies, replicate an image to
 * another host over DWCP, and read the link probe samples those replications stored. Registration and replication
 * are workflows; the route answers what it can at once (400, 404, 409), writes nothing itself, and returns 202
 * with the workflow id, which GET /v1/workflows/:id follows (progress and transfer bytes included).
 */
import type { Client } from '@temporalio/client';
import { WorkflowIdReusePolicy } from '@temporalio/common';
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import type { Pool } from 'pg';
import { z } from 'zod';
import { SAFE_ID_PATTERN, type NovacronConfig } from '../../config/schema';
import type { NovacronMetrics } from '../../observability/metrics';
import { getHost, type HostRecord } from '../../store/hosts';
import { getImage, listImages } from '../../store/images';
import { IMAGE_FORMATS, REPLICA_STATES } from '../../domain/image';
import { LINK_MODES, listLinkProbes } from '../../store/link-probes';
import type { RegisterImageInput, ReplicateImageInput } from '../../workflows/image-workflows';
import { ConflictError, NotFoundError } from '../errors';
import { errorBodySchema } from '../schemas';
import { hostIdSchema } from './hosts';
import { startOrFindWorkflow, workflowStartResponses } from './start-workflow';

export interface ImageRoutesOptions {
  config: NovacronConfig;
  temporal: Client;
  pool: Pool;
  metrics: NovacronMetrics;
}

const imageIdSchema = z.string().regex(SAFE_ID_PATTERN, 'must be an image id (lowercase letters, digits and dashes)');

const imageSchema = z.object({
  id: z.string(),
  format: z.enum(IMAGE_FORMATS),
  sizeBytes: z.number(),
  sha256: z.string(),
  description: z.string(),
  createdAt: z.string(),
  replicas: z.array(
    z.object({
      hostId: z.string(),
      path: z.string(),
      state: z.enum(REPLICA_STATES),
      workflowId: z.string().optional(),
      error: z.string().optional(),
      updatedAt: z.string(),
    }),
  ),
});

const startedSchema = z.object({
  workflowId: z.string(),
  runId: z.string(),
  imageId: z.string(),
  existing: z.boolean(),
});

const linkProbeSchema = z.object({
  id: z.number(),
  sourceHostId: z.string(),
  targetHostId: z.string(),
  measuredAt: z.string(),
  rttMs: z.number(),
  bandwidthMbps: z.number(),
  probeBytes: z.number(),
  streams: z.number(),
  mode: z.enum(LINK_MODES),
  workflowId: z.string().optional(),
});

/** A host that can take part in a DWCP transfer right now; `field` names the request field on refusal. */
async function transferHost(pool: Pool, hostId: string, field: string): Promise<HostRecord> {
  const host = await getHost(pool, hostId);
  if (!host) throw new NotFoundError(`${field}: host ${hostId} does not exist`);
  if (host.state !== 'up') throw new ConflictError(`${field}: host ${hostId} is ${host.state}`);
  if (!host.dwcpEndpoint) throw new ConflictError(`${field}: host ${hostId} has no DWCP receiver registered`);
  return host;
}

export const imageRoutes: FastifyPluginAsyncZod<ImageRoutesOptions> = async (
  app,
  { config, temporal, pool, metrics },
) => {
  const startWorkflow = async (input: {
    type: 'registerImage' | 'replicateImage';
    workflowId: string;
    args: [RegisterImageInput] | [ReplicateImageInput];
    imageId: string;
    reusePolicy: WorkflowIdReusePolicy;
  }): Promise<{ status: 200 | 202; body: z.infer<typeof startedSchema> }> => {
    // A running workflow with this id is the same request again; one that ended may not be started again.
    const { status, ...started } = await startOrFindWorkflow({
      ...input,
      temporal,
      metrics,
      taskQueue: config.temporal.taskQueue,
      whenEnded: 'conflict',
    });
    return { status, body: { ...started, imageId: input.imageId } };
  };

  app.post(
    '/v1/images',
    {
      config: { role: 'operator' },
      schema: {
        summary: 'Register an image file already placed at <imageRoot>/library/<id>.<format> on a host (hashed there)',
        tags: ['images'],
        body: z.strictObject({
          id: imageIdSchema,
          hostId: hostIdSchema,
          format: z.enum(IMAGE_FORMATS).default('raw'),
          description: z.string().max(500).default(''),
        }),
        response: workflowStartResponses(startedSchema),
      },
    },
    async (request, reply) => {
      const { id, hostId, format, description } = request.body;
      const host = await getHost(pool, hostId);
      if (!host) throw new NotFoundError(`body.hostId: host ${hostId} does not exist`);
      if (host.state !== 'up') throw new ConflictError(`body.hostId: host ${hostId} is ${host.state}`);
      if (await getImage(pool, id)) throw new ConflictError(`body.id: image ${id} is already registered`);
      const workflowId = `image-register-${id}`;
      request.auditWorkflowId = workflowId;
      request.auditTarget = id;
      const started = await startWorkflow({
        type: 'registerImage',
        workflowId,
        args: [{ imageId: id, hostId, format, description }],
        imageId: id,
        // A failed registration (file not there yet) may be tried again; a completed one stands.
        reusePolicy: WorkflowIdReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
      });
      return reply.status(started.status).send(started.body);
    },
  );

  app.get(
    '/v1/images',
    {
      config: { role: 'viewer' },
      schema: {
        summary: 'Images and the state of their copy on each host',
        tags: ['images'],
        response: { 200: z.object({ images: z.array(imageSchema) }) },
      },
    },
    async () => ({ images: await listImages(pool) }),
  );

  app.get(
    '/v1/images/:id',
    {
      config: { role: 'viewer' },
      schema: {
        summary: 'One image: size, sha256 and its copies',
        tags: ['images'],
        params: z.strictObject({ id: imageIdSchema }),
        response: { 200: imageSchema, 400: errorBodySchema, 404: errorBodySchema },
      },
    },
    async (request) => {
      const image = await getImage(pool, request.params.id);
      if (!image) throw new NotFoundError(`image ${request.params.id} does not exist`);
      return image;
    },
  );

  app.post(
    '/v1/images/:id/replicate',
    {
      config: { role: 'operator' },
      schema: {
        summary: 'Copy an image to a host over DWCP (replicateImage workflow: probe, transfer, verify)',
        tags: ['images'],
        params: z.strictObject({ id: imageIdSchema }),
        body: z.strictObject({ hostId: hostIdSchema, sourceHostId: hostIdSchema.optional() }),
        response: workflowStartResponses(startedSchema),
      },
    },
    async (request, reply) => {
      const imageId = request.params.id;
      const { hostId, sourceHostId } = request.body;
      const image = await getImage(pool, imageId);
      if (!image) throw new NotFoundError(`image ${imageId} does not exist`);
      await transferHost(pool, hostId, 'body.hostId');
      if (sourceHostId !== undefined) {
        if (sourceHostId === hostId) throw new ConflictError('body.sourceHostId: source and target are the same host');
        await transferHost(pool, sourceHostId, 'body.sourceHostId');
        if (!image.replicas.some((r) => r.hostId === sourceHostId && r.state === 'ready')) {
          throw new ConflictError(`body.sourceHostId: host ${sourceHostId} has no ready copy of image ${imageId}`);
        }
      } else if (!image.replicas.some((r) => r.state === 'ready')) {
        throw new ConflictError(`image ${imageId} has no ready copy on any host`);
      }
      const workflowId = `image-replicate-${imageId}-to-${hostId}`;
      request.auditWorkflowId = workflowId;
      request.auditTarget = imageId;
      const started = await startWorkflow({
        type: 'replicateImage',
        workflowId,
        args: [{ imageId, targetHostId: hostId, ...(sourceHostId ? { sourceHostId } : {}) }],
        imageId,
        // One replication per image and target at a time; once it ended, asking again copies again.
        reusePolicy: WorkflowIdReusePolicy.ALLOW_DUPLICATE,
      });
      return reply.status(started.status).send(started.body);
    },
  );

  app.get(
    '/v1/links',
    {
      config: { role: 'viewer' },
      schema: {
        summary: 'Link probe samples between hosts (RTT, throughput, mode), newest first',
        tags: ['images'],
        querystring: z.strictObject({
          sourceHostId: hostIdSchema.optional(),
          targetHostId: hostIdSchema.optional(),
          limit: z.coerce.number().int().min(1).max(1000).default(100),
        }),
        response: { 200: z.object({ probes: z.array(linkProbeSchema) }) },
      },
    },
    async (request) => {
      const { sourceHostId, targetHostId, limit } = request.query;
      return {
        probes: await listLinkProbes(pool, {
          limit,
          ...(sourceHostId ? { sourceHostId } : {}),
          ...(targetHostId ? { targetHostId } : {}),
        }),
      };
    },
  );
};
