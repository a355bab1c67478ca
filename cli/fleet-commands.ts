/**
 * `novacron host ...`, `novacron failover ...` and `novacron vm ...`: hosts, maintenance, failover reports and
 * readmission, and the VM lifecycle, through the API.
 */
import type { z } from 'zod';
import type { failoverListSchema, failoverReportSchema } from '../api/failover-schemas';
import type { hostListSchema, hostSchema } from '../api/routes/hosts';
import type { vmListSchema, vmStartedSchema } from '../api/routes/vms';
import { LOCAL_STORAGE_POOL } from '../domain/vm-spec';
import { apiClientFor, CliError, parseCommandLine, type ApiClient } from './api-client';
import { followWorkflow } from './follow-workflow';

type Output = (line: string) => void;

export const FLEET_USAGE = `  host list                                   hosts with state, lease token, allocations and storage pools
  host show ID                                one host as JSON
  host maintenance ID on|off                  placement skips a host in maintenance (admin)
  host failovers ID [--limit N] [--json]      the host's failovers, newest first: state, detection and total
                                              time, witness votes, fencing token, VMs restarted
  host readmit ID                             a fenced host up again, if its agent is back and runs no guest the
                                              store places elsewhere (admin)
  failover show ID                            one failover report as JSON
  vm create NAME --vcpus N --memory MIB [--image ID] [--pool NAME] [--disk NAME:MIB[:qcow2|raw] ...]
            [--oem-string S ...] [--host ID] [--network user|none] [--ha-priority N] [--no-ha]
            [--request-id ID] [--wait]        --no-ha: failover leaves the VM down with its host
  vm list [--host ID] [--state S]
  vm show ID
  vm start|stop|reboot|delete ID [--force] [--timeout-ms N] [--hard] [--wait]`;

// The answers of the routes these commands call, as the routes' own schemas define them.
type Host = z.infer<typeof hostSchema>;
type HostList = z.infer<typeof hostListSchema>;
type Failover = z.infer<typeof failoverReportSchema>;
type FailoverList = z.infer<typeof failoverListSchema>;
type VmList = z.infer<typeof vmListSchema>;
type Started = z.infer<typeof vmStartedSchema>;

function integer(value: string | undefined, flag: string): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isInteger(n)) throw new CliError(`${flag} must be an integer, not ${JSON.stringify(value)}`);
  return n;
}

function parseDisk(text: string): { name: string; sizeMib: number; format?: string } {
  const [name, size, format] = text.split(':');
  const sizeMib = integer(size, '--disk size');
  if (!name || sizeMib === undefined) throw new CliError(`--disk wants NAME:MIB[:FORMAT], not ${JSON.stringify(text)}`);
  return { name, sizeMib, ...(format ? { format } : {}) };
}

/** One line: what an operator scans a host's failover history for, `-` for what the failover never reached. */
function failoverLine(f: Failover): string {
  const ms = (value: number | undefined) => (value === undefined ? '-' : `${value} ms`);
  const votes = f.confirmation
    ? `votes ${f.confirmation.accepted}/${f.confirmation.needed} ${f.confirmation.mode}`
    : 'votes -';
  const fenced = f.fencedToken === undefined ? 'not fenced' : `fenced token ${f.fencedToken}`;
  const restarted = f.vms.filter((vm) => vm.outcome === 'restarted').length;
  return (
    `${f.id}  ${f.state.padEnd(13)} suspected ${f.suspectedAt}  detection ${ms(f.detectionMs)}, ` +
    `total ${ms(f.totalMs)}  ${votes}  ${fenced}  VMs restarted ${restarted}/${f.vms.length}`
  );
}

async function follow(api: ApiClient, started: Started, out: Output): Promise<number> {
  out(`${started.existing ? 'already started' : 'started'} ${started.workflowId} (VM ${started.vmId})`);
  return followWorkflow({ api, workflowId: started.workflowId, out, intervalMs: 250 });
}

export async function runFleetCli(argv: string[], out: Output): Promise<number> {
  const parsed = parseCommandLine(argv, {
    api: { type: 'string' },
    vcpus: { type: 'string' },
    memory: { type: 'string' },
    disk: { type: 'string', multiple: true },
    image: { type: 'string' },
    pool: { type: 'string' },
    'oem-string': { type: 'string', multiple: true },
    host: { type: 'string' },
    network: { type: 'string' },
    'ha-priority': { type: 'string' },
    'no-ha': { type: 'boolean' },
    limit: { type: 'string' },
    json: { type: 'boolean' },
    'request-id': { type: 'string' },
    state: { type: 'string' },
    force: { type: 'boolean' },
    hard: { type: 'boolean' },
    'timeout-ms': { type: 'string' },
    wait: { type: 'boolean' },
  });
  const { values, positionals } = parsed;
  const [command, sub, arg, extra] = positionals;
  const api = apiClientFor(values.api);

  if (command === 'host') {
    if (sub === 'list') {
      const { hosts } = await api.get<HostList>('/v1/hosts');
      for (const h of hosts) {
        const lease = h.lease ? `token ${h.lease.fencingToken}${h.lease.alive ? '' : ' (expired)'}` : 'no lease';
        const pools = [LOCAL_STORAGE_POOL, ...Object.keys(h.storagePools).sort()].join(',');
        out(
          `${h.id.padEnd(16)} ${h.state.padEnd(11)} ${h.address.padEnd(15)} ${lease.padEnd(20)} ` +
            `${h.allocated.vms} VMs, ${h.allocated.vcpus}/${h.cpus} vCPU/CPU, ${h.allocated.memoryMib}/${h.memoryMib} MiB, ` +
            `pools ${pools}`,
        );
      }
      if (hosts.length === 0) out('no hosts registered; start a host agent (README "Adding a hypervisor host")');
      return 0;
    }
    if (sub === 'show' && arg) {
      out(JSON.stringify(await api.get(`/v1/hosts/${encodeURIComponent(arg)}`), null, 2));
      return 0;
    }
    if (sub === 'maintenance' && arg && (extra === 'on' || extra === 'off')) {
      const host = await api.post<Host>(`/v1/hosts/${encodeURIComponent(arg)}/maintenance`, {
        enabled: extra === 'on',
      });
      out(`${host.id} is ${host.state}`);
      return 0;
    }
    if (sub === 'failovers' && arg) {
      const limit = integer(values.limit, '--limit');
      const query = limit === undefined ? '' : `?limit=${limit}`;
      const { failovers } = await api.get<FailoverList>(`/v1/hosts/${encodeURIComponent(arg)}/failovers${query}`);
      if (values.json) out(JSON.stringify(failovers, null, 2));
      else for (const f of failovers) out(failoverLine(f));
      if (failovers.length === 0 && !values.json) out(`no failovers recorded for host ${arg}`);
      return 0;
    }
    if (sub === 'readmit' && arg) {
      const host = await api.post<Host>(`/v1/hosts/${encodeURIComponent(arg)}/readmit`, {});
      out(`${host.id} is ${host.state}${host.lease ? ` (lease token ${host.lease.fencingToken})` : ''}`);
      return 0;
    }
    throw new CliError(
      'usage: novacron host list | show ID | maintenance ID on|off | failovers ID [--limit N] [--json] | readmit ID',
    );
  }

  if (command === 'failover') {
    if (sub === 'show' && arg) {
      out(JSON.stringify(await api.get<Failover>(`/v1/failovers/${encodeURIComponent(arg)}`), null, 2));
      return 0;
    }
    throw new CliError('usage: novacron failover show ID');
  }

  if (command === 'vm') {
    if (sub === 'create' && arg) {
      const body: Record<string, unknown> = {
        name: arg,
        vcpus: integer(values.vcpus, '--vcpus'),
        memoryMib: integer(values.memory, '--memory'),
        disks: (values.disk ?? []).map(parseDisk),
        ...(values.image ? { image: values.image } : {}),
        ...(values.pool ? { storagePool: values.pool } : {}),
        ...(values['oem-string'] ? { oemStrings: values['oem-string'] } : {}),
        ...(values.host ? { hostId: values.host } : {}),
        ...(values.network ? { network: values.network } : {}),
        ...(values['ha-priority'] ? { haPriority: integer(values['ha-priority'], '--ha-priority') } : {}),
        ...(values['no-ha'] ? { ha: false } : {}),
        ...(values['request-id'] ? { requestId: values['request-id'] } : {}),
      };
      const started = await api.post<Started>('/v1/vms', body);
      if (values.wait) return follow(api, started, out);
      out(
        `started ${started.workflowId} (VM ${started.vmId}); follow it with novacron workflow show ${started.workflowId}`,
      );
      return 0;
    }
    if (sub === 'list') {
      const query = new URLSearchParams();
      if (values.host) query.set('hostId', values.host);
      if (values.state) query.set('state', values.state);
      const { vms } = await api.get<VmList>(`/v1/vms${query.size > 0 ? `?${query.toString()}` : ''}`);
      for (const vm of vms) {
        const busy = vm.operationWorkflowId ? `  (${vm.operationWorkflowId})` : '';
        out(`${vm.id}  ${vm.name.padEnd(20)} ${vm.state.padEnd(10)} ${(vm.hostId ?? '-').padEnd(16)}${busy}`);
      }
      if (vms.length === 0) out('no VMs');
      return 0;
    }
    if (sub === 'show' && arg) {
      out(JSON.stringify(await api.get(`/v1/vms/${encodeURIComponent(arg)}`), null, 2));
      return 0;
    }
    if ((sub === 'start' || sub === 'stop' || sub === 'reboot' || sub === 'delete') && arg) {
      const path = `/v1/vms/${encodeURIComponent(arg)}`;
      const body: Record<string, unknown> = {};
      if (sub === 'stop' && values.force) body.force = true;
      if (sub === 'stop' && values['timeout-ms']) body.timeoutMs = integer(values['timeout-ms'], '--timeout-ms');
      if (sub === 'reboot' && values.hard) body.hard = true;
      const started =
        sub === 'delete' ? await api.delete<Started>(path) : await api.post<Started>(`${path}/${sub}`, body);
      if (values.wait) return follow(api, started, out);
      out(`started ${started.workflowId}`);
      return 0;
    }
    throw new CliError('usage: novacron vm create NAME ... | list | show ID | start|stop|reboot|delete ID');
  }
  throw new CliError(`unknown command "${command ?? ''}"; run novacron --help`);
}
