/**
 * Control-side image activities: plan a replication from the image library and the hosts table, and record what
 * the host activities found (images, replica outcomes, link probe samples). They run on the control task queue.
 */
import { ApplicationFailure } from '@temporalio/activity';
import path from 'node:path';
import type { Pool } from 'pg';
import { recordEvent } from '../store/events';
import { getHost, type HostRecord } from '../store/hosts';
import { finishReplica, getImage, ImageStoreError, registerImage, upsertReplica } from '../store/images';
import { imageFileName, type ImageFormat, type ImageRecord } from '../domain/image';
import { recordLinkProbe } from '../store/link-probes';
import type { LinkProbeReport } from './image-activities';

export interface ImageControlDeps {
  pool: Pool;
}

export interface ReplicationPlanInput {
  imageId: string;
  targetHostId: string;
  sourceHostId?: string;
  workflowId: string;
}

export interface ReplicationPlan {
  image: { id: string; format: ImageFormat; sizeBytes: number; sha256: string };
  sourceHostId: string;
  sourceEndpoint: string;
  targetHostId: string;
  targetEndpoint: string;
  targetPath: string;
  /** The target already holds a verified copy; the workflow has nothing to move. */
  alreadyReady: boolean;
}

type UsableHost = HostRecord & { dwcpEndpoint: string };

function usableHost(host: HostRecord | undefined, hostId: string, role: string): UsableHost {
  if (!host) throw ApplicationFailure.nonRetryable(`${role} host ${hostId} does not exist`, 'HostNotFound');
  if (host.state !== 'up')
    throw ApplicationFailure.nonRetryable(`${role} host ${hostId} is ${host.state}`, 'HostNotUp');
  if (!host.dwcpEndpoint) {
    throw ApplicationFailure.nonRetryable(`${role} host ${hostId} has no DWCP receiver registered`, 'NoDwcpEndpoint');
  }
  return { ...host, dwcpEndpoint: host.dwcpEndpoint };
}

async function chooseSource(pool: Pool, image: ImageRecord, input: ReplicationPlanInput): Promise<UsableHost> {
  const ready = image.replicas.filter((r) => r.state === 'ready' && r.hostId !== input.targetHostId);
  if (input.sourceHostId !== undefined) {
    if (!ready.some((r) => r.hostId === input.sourceHostId)) {
      throw ApplicationFailure.nonRetryable(
        `host ${input.sourceHostId} has no ready copy of image ${image.id}`,
        'NoSourceReplica',
      );
    }
    return usableHost(await getHost(pool, input.sourceHostId), input.sourceHostId, 'source');
  }
  for (const replica of ready) {
    const host = await getHost(pool, replica.hostId);
    if (host?.state === 'up' && host.dwcpEndpoint) return { ...host, dwcpEndpoint: host.dwcpEndpoint };
  }
  throw ApplicationFailure.nonRetryable(`no up host has a ready copy of image ${image.id}`, 'NoSourceReplica');
}

export function createImageControlActivities(deps: ImageControlDeps) {
  const { pool } = deps;
  return {
    /** What a VM made from the image needs to know of it: format, size and content hash. */
    async lookupImage(input: { imageId: string }): Promise<ReplicationPlan['image']> {
      const image = await getImage(pool, input.imageId);
      if (!image) throw ApplicationFailure.nonRetryable(`image ${input.imageId} does not exist`, 'ImageNotFound');
      return { id: image.id, format: image.format, sizeBytes: image.sizeBytes, sha256: image.sha256 };
    },

    /** Chooses the source, checks both hosts, and marks the target's replica as replicating by this workflow. */
    async planImageReplication(input: ReplicationPlanInput): Promise<ReplicationPlan> {
      const image = await getImage(pool, input.imageId);
      if (!image) throw ApplicationFailure.nonRetryable(`image ${input.imageId} does not exist`, 'ImageNotFound');
      const target = usableHost(await getHost(pool, input.targetHostId), input.targetHostId, 'target');
      const targetPath = path.join(target.imageRoot, imageFileName({ imageId: image.id, format: image.format }));
      const current = image.replicas.find((r) => r.hostId === target.id);
      const alreadyReady = current?.state === 'ready';
      const source = alreadyReady ? target : await chooseSource(pool, image, input);
      if (!alreadyReady) {
        await upsertReplica(pool, {
          imageId: image.id,
          hostId: target.id,
          path: targetPath,
          state: 'replicating',
          workflowId: input.workflowId,
        });
      }
      return {
        image: { id: image.id, format: image.format, sizeBytes: image.sizeBytes, sha256: image.sha256 },
        sourceHostId: source.id,
        sourceEndpoint: source.dwcpEndpoint,
        targetHostId: target.id,
        targetEndpoint: target.dwcpEndpoint,
        targetPath,
        alreadyReady,
      };
    },

    async finishImageReplica(input: {
      imageId: string;
      hostId: string;
      workflowId: string;
      state: 'ready' | 'failed';
      message: string;
      error?: string;
    }): Promise<{ recorded: boolean }> {
      const recorded = await finishReplica(pool, input);
      await recordEvent(pool, {
        kind: input.state === 'ready' ? 'image.replicated' : 'image.replication.failed',
        hostId: input.hostId,
        workflowId: input.workflowId,
        message: input.message,
        idempotencyKey: `${input.workflowId}:finish-replica`,
      });
      return { recorded };
    },

    async recordImage(input: {
      imageId: string;
      format: ImageFormat;
      description: string;
      hostId: string;
      path: string;
      sizeBytes: number;
      sha256: string;
      workflowId: string;
    }): Promise<ImageRecord> {
      try {
        const image = await registerImage(pool, { ...input, id: input.imageId });
        await recordEvent(pool, {
          kind: 'image.registered',
          hostId: input.hostId,
          workflowId: input.workflowId,
          message: `image ${input.imageId} (${input.sizeBytes} bytes, sha256 ${input.sha256.slice(0, 12)}) on ${input.hostId}`,
          idempotencyKey: `${input.workflowId}:record-image`,
        });
        return image;
      } catch (err) {
        if (err instanceof ImageStoreError) throw ApplicationFailure.nonRetryable(err.message, 'ImageContentMismatch');
        throw err;
      }
    },

    /** Keyed by workflow id + step, so a retry stores the sample once. */
    async recordLinkProbe(input: {
      report: LinkProbeReport;
      workflowId: string;
      step: string;
    }): Promise<{ id: number }> {
      const id = await recordLinkProbe(pool, {
        ...input.report,
        workflowId: input.workflowId,
        idempotencyKey: `${input.workflowId}:${input.step}`,
      });
      return { id };
    },
  };
}

export type ImageControlActivities = ReturnType<typeof createImageControlActivities>;
