/**
 * VMs: create, list, show, start, stop, reboot, delete, and the host/VM event timeline. Every change is a
 * workflow: the route checks what it can answer at once (400, 404, 409) and writes nothing itself, then returns
 * 202 with the workflow id, which GET /v1/workflows/:id follows.
 */
import { WorkflowIdReusePolicy } from '@temporalio/common';
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { createHash, randomUUID } from 'node:crypto';
import type { Pool } from 'pg';
import { z } from 'zod';
import { listEvents } from '../../store/events';
import { getHost, listHosts, type HostRecord } from '../../store/hosts';
import { getImage } from '../../store/images';
import { getVm, getVmByName, listVms } from '../../store/vms';
import {
  LOCAL_STORAGE_POOL,
  VM_STATES,
  vmSpecSchema,
  type VmRecord,
  type VmSpec,
  type VmState,
} from '../../domain/vm-spec';
import { ConflictError, NotFoundError, UnprocessableError } from '../errors';
import { errorBodySchema, requestIdSchema, type WorkflowFunctions } from '../schemas';
import { hostIdSchema } from './hosts';
import { startOrFindWorkflow, workflowStartResponses } from './start-workflow';

const vmIdParams = z.strictObject({ id: z.uuid('must be a VM id (a UUID)') });

export const vmSchema = z.object({
  id: z.string(),
  name: z.string(),
  hostId: z.string().optional(),
  spec: z.unknown(),
  state: z.enum(VM_STATES),
  ownerToken: z.number().optional(),
  operationWorkflowId: z.string().optional(),
  lastError: z.string().optional(),
  createdAt: z.string(),
  updatedAt: z.string(),
});

export const vmStartedSchema = z.object({
  workflowId: z.string(),
  runId: z.string(),
  vmId: z.string(),
  existing: z.boolean(),
});

export const vmListSchema = z.object({ vms: z.array(vmSchema) });

export const eventListSchema = z.object({
  events: z.array(
    z.object({
      id: z.number(),
      at: z.string(),
      kind: z.string(),
      hostId: z.string().optional(),
      vmId: z.string().optional(),
      workflowId: z.string().optional(),
      message: z.string(),
    }),
  ),
});

const idempotencyHeaders = z.object({ 'idempotency-key': requestIdSchema.optional() });

/** A request id names one VM forever, so a retried create finds the same workflow and the same VM. */
function vmIdFromRequestId(requestId: string): string {
  const hex = createHash('sha256').update(`novacron-vm:${requestId}`).digest('hex');
  const variant = ((parseInt(hex[16]!, 16) & 0x3) | 0x8).toString(16);
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-5${hex.slice(13, 16)}-${variant}${hex.slice(17, 20)}-${hex.slice(20, 32)}`;
}

type Operation = 'start' | 'stop' | 'reboot' | 'delete';
type VmWorkflow = 'vmCreate' | 'vmStart' | 'vmStop' | 'vmReboot' | 'vmDelete';
/** One of the VM workflows with its own input: a start the type checker matches name to arguments for. */
type VmWorkflowStart = { [N in VmWorkflow]: { type: N; args: Parameters<WorkflowFunctions[N]> } }[VmWorkflow];
/** States from which each operation makes sense; anything else is a 409 before a workflow starts. */
const ALLOWED_FROM: Record<Operation, readonly VmState[]> = {
  start: ['stopped', 'failed'],
  stop: ['running', 'failed'],
  reboot: ['running'],
  delete: ['running', 'stopped', 'failed'],
};

/**
 * What the spec asks of the library and the pools, answered before a workflow starts: the image exists and has a
 * copy to make the VM's base from, its first disk can be an overlay, and an up host mounts the pool (the one named
 * by hostId, if any). 404 for an unknown image, 422 for what no retry changes.
 */
async function checkImageAndPool(pool: Pool, spec: VmSpec, pinned: HostRecord | undefined): Promise<void> {
  if (spec.image !== undefined) {
    const image = await getImage(pool, spec.image);
    if (!image) throw new NotFoundError(`body.image: image ${spec.image} does not exist`);
    if (!image.replicas.some((replica) => replica.state === 'ready')) {
      throw new ConflictError(`body.image: image ${spec.image} has no ready copy on any host`);
    }
    if (spec.disks[0] !== undefined && spec.disks[0].format !== 'qcow2') {
      throw new UnprocessableError(
        'body.disks.0.format: the first disk of a VM made from an image is a qcow2 overlay on it',
      );
    }
  }
  if (spec.storagePool === LOCAL_STORAGE_POOL) return;
  if (pinned) {
    if (!Object.hasOwn(pinned.storagePools, spec.storagePool)) {
      throw new UnprocessableError(
        `body.storagePool: host ${pinned.id} does not mount storage pool ${spec.storagePool}`,
      );
    }
    return;
  }
  const hosts = await listHosts(pool);
  // hasOwn, not `in`: `constructor` is a well-formed pool name that every object has.
  if (!hosts.some((host) => host.state === 'up' && Object.hasOwn(host.storagePools, spec.storagePool))) {
    const known = [...new Set(hosts.flatMap((host) => Object.keys(host.storagePools)))].sort();
    throw new UnprocessableError(
      `body.storagePool: no up host mounts storage pool ${spec.storagePool} ` +
        `(pools hosts declare: ${[LOCAL_STORAGE_POOL, ...known].join(', ')})`,
    );
  }
}

export const vmRoutes: FastifyPluginAsyncZod = async (app) => {
  const { pool } = app;
  const startWorkflow = async <N extends VmWorkflow>(input: {
    type: N;
    workflowId: string;
    args: Parameters<WorkflowFunctions[N]>;
    vmId: string;
  }): Promise<{ status: 200 | 202; body: z.infer<typeof vmStartedSchema> }> => {
    const { vmId, ...start } = input;
    const { status, ...started } = await startOrFindWorkflow(app, {
      ...start,
      reusePolicy: WorkflowIdReusePolicy.REJECT_DUPLICATE,
      whenEnded: 'find',
    });
    return { status, body: { ...started, vmId } };
  };

  app.post(
    '/v1/vms',
    {
      config: { role: 'operator' },
      schema: {
        summary: 'Create a VM: placement, the image base, disks, define and start run as the vmCreate workflow',
        tags: ['vms'],
        headers: idempotencyHeaders,
        body: vmSpecSchema.extend({ requestId: requestIdSchema.optional() }),
        response: { ...workflowStartResponses(vmStartedSchema), 422: errorBodySchema },
      },
    },
    async (request, reply) => {
      const { requestId: bodyRequestId, ...spec } = request.body;
      const requestId = bodyRequestId ?? request.headers['idempotency-key'];
      const vmId = requestId ? vmIdFromRequestId(requestId) : randomUUID();
      let pinned: HostRecord | undefined;
      if (spec.hostId) {
        pinned = await getHost(pool, spec.hostId);
        if (!pinned) throw new NotFoundError(`body.hostId: host ${spec.hostId} does not exist`);
        if (pinned.state !== 'up') throw new ConflictError(`body.hostId: host ${spec.hostId} is ${pinned.state}`);
      }
      await checkImageAndPool(pool, spec, pinned);
      const sameName = await getVmByName(pool, spec.name);
      if (sameName && sameName.id !== vmId) {
        throw new ConflictError(`body.name: a VM named ${spec.name} already exists (${sameName.id})`);
      }
      const workflowId = `vm-create-${vmId}`;
      request.auditWorkflowId = workflowId;
      request.auditTarget = vmId;
      const started = await startWorkflow({ type: 'vmCreate', workflowId, args: [{ vmId, spec }], vmId });
      return reply.status(started.status).send(started.body);
    },
  );

  app.get(
    '/v1/vms',
    {
      config: { role: 'viewer' },
      schema: {
        summary: 'VMs, optionally by host or state',
        tags: ['vms'],
        querystring: z.strictObject({ hostId: hostIdSchema.optional(), state: z.enum(VM_STATES).optional() }),
        response: { 200: vmListSchema },
      },
    },
    async (request) => {
      const { hostId, state } = request.query;
      return { vms: await listVms(pool, { ...(hostId ? { hostId } : {}), ...(state ? { state } : {}) }) };
    },
  );

  app.get(
    '/v1/vms/:id',
    {
      config: { role: 'viewer' },
      schema: {
        summary: 'One VM: its spec, host, state and the workflow holding it, if any',
        tags: ['vms'],
        params: vmIdParams,
        response: { 200: vmSchema, 404: errorBodySchema },
      },
    },
    async (request) => {
      const vm = await getVm(pool, request.params.id);
      if (!vm) throw new NotFoundError(`VM ${request.params.id} does not exist`);
      return vm;
    },
  );

  const operable = async (vmId: string, operation: Operation): Promise<VmRecord> => {
    const vm = await getVm(pool, vmId);
    if (!vm) throw new NotFoundError(`VM ${vmId} does not exist`);
    if (vm.operationWorkflowId) {
      throw new ConflictError(`VM ${vm.name} is busy with workflow ${vm.operationWorkflowId}`);
    }
    if (!ALLOWED_FROM[operation].includes(vm.state)) {
      throw new ConflictError(`VM ${vm.name} is ${vm.state}; cannot ${operation} it`);
    }
    return vm;
  };

  /** `start` turns the validated body into the operation's workflow start, typed by the workflow's input. */
  const operationRoute = <B extends z.ZodType>(
    operation: Exclude<Operation, 'delete'>,
    body: B,
    summary: string,
    start: (vmId: string, options: z.output<B>) => VmWorkflowStart,
  ) =>
    app.post(
      `/v1/vms/:id/${operation}`,
      {
        config: { role: 'operator' },
        schema: {
          summary,
          tags: ['vms'],
          params: vmIdParams,
          headers: idempotencyHeaders,
          body,
          response: workflowStartResponses(vmStartedSchema),
        },
        // A POST without a body means "all defaults".
        preValidation: async (request) => {
          (request as { body: unknown }).body ??= {};
        },
      },
      async (request, reply) => {
        const vm = await operable(request.params.id, operation);
        const key = request.headers['idempotency-key'] ?? randomUUID().slice(0, 8);
        const workflowId = `vm-${operation}-${vm.id}-${key}`;
        request.auditWorkflowId = workflowId;
        // The validator produced the body from `body`; the type provider cannot follow a generic schema that far.
        const started = await startWorkflow({ ...start(vm.id, request.body as z.output<B>), workflowId, vmId: vm.id });
        return reply.status(started.status).send(started.body);
      },
    );

  operationRoute('start', z.strictObject({}), 'Start a stopped VM on its host', (vmId) => ({
    type: 'vmStart',
    args: [{ vmId }],
  }));
  operationRoute(
    'stop',
    z.strictObject({
      force: z.boolean().optional(),
      timeoutMs: z.number().int().min(0).max(600_000).optional(),
    }),
    'Stop a VM: ACPI shutdown, destroyed after timeoutMs (default 30 s), or at once with force',
    (vmId, options) => ({ type: 'vmStop', args: [{ vmId, ...options }] }),
  );
  operationRoute(
    'reboot',
    z.strictObject({ hard: z.boolean().optional() }),
    'Reboot a running VM (hard: reset, for guests that ignore ACPI)',
    (vmId, options) => ({ type: 'vmReboot', args: [{ vmId, ...options }] }),
  );

  app.delete(
    '/v1/vms/:id',
    {
      config: { role: 'operator' },
      schema: {
        summary: 'Delete a VM: destroy and undefine its domain, remove its disks and its record',
        tags: ['vms'],
        params: vmIdParams,
        headers: idempotencyHeaders,
        response: workflowStartResponses(vmStartedSchema),
      },
    },
    async (request, reply) => {
      const vm = await operable(request.params.id, 'delete');
      const key = request.headers['idempotency-key'] ?? randomUUID().slice(0, 8);
      const workflowId = `vm-delete-${vm.id}-${key}`;
      request.auditWorkflowId = workflowId;
      const started = await startWorkflow({ type: 'vmDelete', workflowId, args: [{ vmId: vm.id }], vmId: vm.id });
      return reply.status(started.status).send(started.body);
    },
  );

  app.get(
    '/v1/events',
    {
      config: { role: 'viewer' },
      schema: {
        summary: 'Host and VM events (lifecycle outcomes, host up/down, maintenance, drift), newest first',
        tags: ['vms'],
        querystring: z.strictObject({
          hostId: hostIdSchema.optional(),
          vmId: z.uuid().optional(),
          limit: z.coerce.number().int().min(1).max(1000).default(100),
        }),
        response: { 200: eventListSchema },
      },
    },
    async (request) => {
      const { hostId, vmId, limit } = request.query;
      return { events: await listEvents(pool, { limit, ...(hostId ? { hostId } : {}), ...(vmId ? { vmId } : {}) }) };
    },
  );
};
