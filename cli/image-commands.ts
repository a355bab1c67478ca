/** `novacron image ...` and `novacron link list`: the image library and DWCP replication, through the API. */
import type { z } from 'zod';
import type { TransferHeartbeat } from '../activities/image-activities';
import type { imageListSchema, imageStartedSchema, linkProbeListSchema } from '../api/routes/images';
import { apiClientFor, CliError, parseCommandLine, type ApiClient } from './api-client';
import { followWorkflow, type WorkflowDetail } from './follow-workflow';

type Output = (line: string) => void;

export const IMAGE_USAGE = `  image register ID --host H [--format raw|qcow2] [--description TEXT] [--wait]
                                              hash <imageRoot>/library/ID.FORMAT on host H and record it
  image list                                  images and where each has a ready copy
  image show ID                               one image as JSON
  image replicate ID --to H [--from H] [--wait]
                                              copy an image to host H over DWCP; --wait shows bytes moved
  link list [--from H] [--to H] [--limit N]   link probe samples between hosts, newest first`;

// The answers of the routes these commands call, as the routes' own schemas define them.
type ImageList = z.infer<typeof imageListSchema>;
type Started = z.infer<typeof imageStartedSchema>;
type LinkProbeList = z.infer<typeof linkProbeListSchema>;

const MiB = 1024 * 1024;

function mib(bytes: number): string {
  return `${(bytes / MiB).toFixed(1)} MiB`;
}

/** The sender's newest heartbeat, as one line: what an operator watching a replication wants to see. */
function transferLine(detail: WorkflowDetail): string | undefined {
  // The route passes heartbeats through as they are; before the transfer starts, one carries only its phase.
  const beat = detail.pendingActivities.find((a) => a.activityType === 'transferImage')?.heartbeatDetails as
    Partial<TransferHeartbeat> | undefined;
  if (!beat || typeof beat.logicalBytes !== 'number' || typeof beat.totalBytes !== 'number') return undefined;
  const percent = beat.totalBytes > 0 ? Math.floor((100 * beat.logicalBytes) / beat.totalBytes) : 100;
  return `${beat.phase ?? 'sending'} ${mib(beat.logicalBytes)} of ${mib(beat.totalBytes)} (${percent}%), ${mib(beat.wireBytes ?? 0)} on the wire`;
}

async function follow(api: ApiClient, started: Started, out: Output): Promise<number> {
  out(`${started.existing ? 'already started' : 'started'} ${started.workflowId} (image ${started.imageId})`);
  return followWorkflow({ api, workflowId: started.workflowId, out, intervalMs: 1000, progressLine: transferLine });
}

export async function runImageCli(argv: string[], out: Output): Promise<number> {
  const parsed = parseCommandLine(argv, {
    api: { type: 'string' },
    host: { type: 'string' },
    format: { type: 'string' },
    description: { type: 'string' },
    to: { type: 'string' },
    from: { type: 'string' },
    limit: { type: 'string' },
    wait: { type: 'boolean' },
  });
  const { values, positionals } = parsed;
  const [command, sub, arg] = positionals;
  const api = apiClientFor(values.api);

  if (command === 'image') {
    if (sub === 'register' && arg) {
      if (!values.host) throw new CliError('image register needs --host H: the host whose library holds the file');
      const started = await api.post<Started>('/v1/images', {
        id: arg,
        hostId: values.host,
        ...(values.format ? { format: values.format } : {}),
        ...(values.description ? { description: values.description } : {}),
      });
      if (values.wait) return follow(api, started, out);
      out(`started ${started.workflowId}; follow it with novacron workflow show ${started.workflowId}`);
      return 0;
    }
    if (sub === 'list') {
      const { images } = await api.get<ImageList>('/v1/images');
      for (const image of images) {
        const ready = image.replicas.filter((r) => r.state === 'ready').map((r) => r.hostId);
        const other = image.replicas.filter((r) => r.state !== 'ready').map((r) => `${r.hostId} (${r.state})`);
        out(
          `${image.id.padEnd(20)} ${image.format.padEnd(6)} ${mib(image.sizeBytes).padStart(12)}  ` +
            `${image.sha256.slice(0, 12)}  on ${[...ready, ...other].join(', ') || 'no host'}`,
        );
      }
      if (images.length === 0) out('no images; put a file in a host library and run novacron image register');
      return 0;
    }
    if (sub === 'show' && arg) {
      out(JSON.stringify(await api.get(`/v1/images/${encodeURIComponent(arg)}`), null, 2));
      return 0;
    }
    if (sub === 'replicate' && arg) {
      if (!values.to) throw new CliError('image replicate needs --to H: the host to copy the image to');
      const started = await api.post<Started>(`/v1/images/${encodeURIComponent(arg)}/replicate`, {
        hostId: values.to,
        ...(values.from ? { sourceHostId: values.from } : {}),
      });
      if (values.wait) return follow(api, started, out);
      out(`started ${started.workflowId}; follow it with novacron workflow show ${started.workflowId}`);
      return 0;
    }
    throw new CliError('usage: novacron image register ID --host H | list | show ID | replicate ID --to H');
  }
  if (command === 'link' && sub === 'list') {
    const query = new URLSearchParams();
    if (values.from) query.set('sourceHostId', values.from);
    if (values.to) query.set('targetHostId', values.to);
    if (values.limit) query.set('limit', values.limit);
    const { probes } = await api.get<LinkProbeList>(`/v1/links${query.size > 0 ? `?${query.toString()}` : ''}`);
    for (const p of probes) {
      out(
        `${p.measuredAt}  ${p.sourceHostId} -> ${p.targetHostId}  rtt ${p.rttMs.toFixed(2)} ms  ` +
          `${p.bandwidthMbps.toFixed(0)} Mbit/s  ${p.mode}`,
      );
    }
    if (probes.length === 0) out('no link probes yet; every image replication stores one');
    return 0;
  }
  throw new CliError('usage: novacron link list [--from H] [--to H] [--limit N]');
}
