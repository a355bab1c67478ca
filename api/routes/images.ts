/**
 * The image library: register an image file placed on a host, list images and their copies, replicate an image to
 * another host over DWCP, and read the link probe samples those replications stored. Registration and replication
 * are workflows; the route answers what it can at once (400, 404, 409), writes nothing itself, and returns 202
 * with the workflow id, which GET /v1/workflows/:id follows (progress and transfer bytes included).
 */
import { WorkflowIdReusePolicy } from '@temporalio/common';
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import type { Pool } from 'pg';
import { z } from 'zod';
import { SAFE_ID_PATTERN } from '../../config/schema';
import { getHost, type HostRecord } from '../../store/hosts';
import { getImage, listImages } from '../../store/images';
import { IMAGE_FORMATS, REPLICA_STATES } from '../../domain/image';
import { LINK_MODES, listLinkProbes } from '../../store/link-probes';
import { ConflictError, NotFoundError } from '../errors';
import { errorBodySchema, type WorkflowFunctions } from '../schemas';
import { hostIdSchema } from './hosts';
import { startOrFindWorkflow, workflowStartResponses } from './start-workflow';

const imageIdSchema = z.string().regex(SAFE_ID_PATTERN, 'must be an image id (lowercase letters, digits and dashes)');

export const imageSchema = z.object({
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

export const imageStartedSchema = z.object({
  workflowId: z.string(),
  runId: z.string(),
  imageId: z.string(),
  existing: z.boolean(),
});

export const linkProbeSchema = z.object({
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

export const imageListSchema = z.object({ images: z.array(imageSchema) });
export const linkProbeListSchema = z.object({ probes: z.array(linkProbeSchema) });

/** A host that can take part in a DWCP transfer right now; `field` names the request field on refusal. */
async function transferHost(pool: Pool, hostId: string, field: string): Promise<HostRecord> {
  const host = await getHost(pool, hostId);
  if (!host) throw new NotFoundError(`${field}: host ${hostId} does not exist`);
  if (host.state !== 'up') throw new ConflictError(`${field}: host ${hostId} is ${host.state}`);
  if (!host.dwcpEndpoint) throw new ConflictError(`${field}: host ${hostId} has no DWCP receiver registered`);
  return host;
}

export const imageRoutes: FastifyPluginAsyncZod = async (app) => {
  const { pool } = app;
  const startWorkflow = async <N extends 'registerImage' | 'replicateImage'>(input: {
    type: N;
    workflowId: string;
    args: Parameters<WorkflowFunctions[N]>;
    imageId: string;
    reusePolicy: WorkflowIdReusePolicy;
  }): Promise<{ status: 200 | 202; body: z.infer<typeof imageStartedSchema> }> => {
    const { imageId, ...start } = input;
    // A running workflow with this id is the same request again; one that ended may not be started again.
    const { status, ...started } = await startOrFindWorkflow(app, { ...start, whenEnded: 'conflict' });
    return { status, body: { ...started, imageId } };
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
        response: workflowStartResponses(imageStartedSchema),
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
        // The store, checked above, says whether the image is registered: a run that ended (failed, or completed for a
        // database since replaced, as test runs sharing one Temporal server do) must not block a new registration.
        reusePolicy: WorkflowIdReusePolicy.ALLOW_DUPLICATE,
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
        response: { 200: imageListSchema },
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
        response: { 200: imageSchema, 404: errorBodySchema },
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
        response: workflowStartResponses(imageStartedSchema),
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
        response: { 200: linkProbeListSchema },
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
