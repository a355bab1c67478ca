/** `novacron vm migrate ...` and `novacron migration list|show`: live migration through the API. */
import { createInterface } from 'node:readline/promises';
import type { z } from 'zod';
import type { migrationListSchema, migrationRecordSchema, migrationStartedSchema } from '../api/migration-schemas';
import type { MigrationPlan, MigrationPolicyInput } from '../domain/migration';
import { mib, mibPerSecond } from '../domain/migration-plan';
import { apiClientFor, CliError, parseCommandLine } from './api-client';
import {
  escalationLine,
  followMigration,
  formatDuration,
  plainView,
  progressLine,
  resultLine,
  terminalView,
  type FollowInput,
} from './migration-progress';

type Output = (line: string) => void;

export const MIGRATION_USAGE = `  vm migrate ID [--to HOST] [--policy-json JSON | --max-downtime-ms N --allow-post-copy --no-auto-converge
             --bandwidth-mibps N --forbid-escalation] [--request-id ID] [--wait]
                                              live-migrate a running VM; answers with the plan, or why it is
                                              refused; --wait shows progress (Ctrl-C: cancel or detach)
  migration list [--vm ID] [--state S] [--limit N]
                                              migrations, newest first
  migration show ID [--json]                  one migration: hosts, plan, progress, escalations, result`;

// The answers of the routes these commands call, as the routes' own schemas define them.
type Started = z.infer<typeof migrationStartedSchema>;
type MigrationList = z.infer<typeof migrationListSchema>;
type Migration = z.infer<typeof migrationRecordSchema>;

const OPTIONS = {
  api: { type: 'string' },
  to: { type: 'string' },
  'policy-json': { type: 'string' },
  'max-downtime-ms': { type: 'string' },
  'allow-post-copy': { type: 'boolean' },
  'no-auto-converge': { type: 'boolean' },
  'bandwidth-mibps': { type: 'string' },
  'forbid-escalation': { type: 'boolean' },
  'request-id': { type: 'string' },
  wait: { type: 'boolean' },
  vm: { type: 'string' },
  state: { type: 'string' },
  limit: { type: 'string' },
  json: { type: 'boolean' },
} as const;

type Values = ReturnType<typeof parseCommandLine<typeof OPTIONS>>['values'];

const POLICY_FLAGS = [
  'max-downtime-ms',
  'allow-post-copy',
  'no-auto-converge',
  'bandwidth-mibps',
  'forbid-escalation',
] as const;

function wholeNumber(value: string, flag: string): number {
  if (!/^\d+$/.test(value)) throw new CliError(`--${flag} must be a whole number, not ${JSON.stringify(value)}`);
  return Number(value);
}

/** The policy the flags ask for; ranges are the API's to check, which names the field it refuses. */
export function migrationPolicyFromFlags(values: Values): MigrationPolicyInput | undefined {
  const given = POLICY_FLAGS.filter((flag) => values[flag] !== undefined);
  if (values['policy-json'] !== undefined) {
    if (given.length > 0) throw new CliError(`--policy-json replaces --${given[0]}: give one or the other`);
    let policy: unknown;
    try {
      policy = JSON.parse(values['policy-json']);
    } catch (err) {
      throw new CliError(`--policy-json is not JSON: ${(err as Error).message}`);
    }
    if (typeof policy !== 'object' || policy === null || Array.isArray(policy)) {
      throw new CliError('--policy-json must be a JSON object, e.g. {"maxDowntimeMs":500}');
    }
    return policy;
  }
  if (given.length === 0) return undefined;
  const policy: MigrationPolicyInput = {};
  if (values['max-downtime-ms'] !== undefined) {
    policy.maxDowntimeMs = wholeNumber(values['max-downtime-ms'], 'max-downtime-ms');
  }
  if (values['bandwidth-mibps'] !== undefined) {
    policy.bandwidthMiBps = wholeNumber(values['bandwidth-mibps'], 'bandwidth-mibps');
  }
  if (values['allow-post-copy']) policy.allowPostCopy = true;
  if (values['no-auto-converge']) policy.allowAutoConverge = false;
  if (values['forbid-escalation']) policy.escalation = 'forbidden';
  return policy;
}

export function planLine(plan: MigrationPlan): string {
  const { prediction, parameters, inputs } = plan;
  const outlook = prediction.converges
    ? `predicted ${formatDuration(prediction.totalMs)}, ${Math.round(prediction.downtimeMs)} ms downtime, ${prediction.passes} passes`
    : `not predicted to converge at ${parameters.maxDowntimeMs} ms (${prediction.reason ?? 'no reason given'})`;
  const mitigation = plan.mitigation !== 'none' ? `, relies on ${plan.mitigation}` : '';
  return (
    `plan: ${plan.mode}, ${outlook}${mitigation}; ${parameters.parallelConnections} connections, ` +
    `memory ${mib(inputs.memoryBytes)}, dirty rate ${mibPerSecond(inputs.dirtyRateBytesPerSecond)}, ` +
    `link ${mibPerSecond(inputs.linkBandwidthBytesPerSecond)}`
  );
}

function describeMigration(m: Migration, out: Output): void {
  out(`${m.id}  ${m.state}  VM ${m.vmId}  ${m.sourceHostId} -> ${m.targetHostId ?? '(placement)'}`);
  out(
    `  created ${m.createdAt}${m.startedAt ? `, started ${m.startedAt}` : ''}${m.finishedAt ? `, finished ${m.finishedAt}` : ''}`,
  );
  if (m.plan) out(`  ${planLine(m.plan)}`);
  if (m.progress && !m.result) out(`  ${progressLine(m.progress, () => '')}`);
  for (const step of m.escalations) out(`  ${escalationLine(step)}`);
  if (m.result) out(`  ${resultLine(m.result)}`);
  else if (m.error) out(`  error: ${m.error}`);
}

/** Ctrl-C as an event for the follower, instead of the process's default of ending at once. */
function processInterrupts(handler: () => void): () => void {
  process.on('SIGINT', handler);
  return () => process.off('SIGINT', handler);
}

/** A yes/no question on the terminal; without one nobody can answer, which keeps the migration running. */
async function confirmOnTerminal(question: string): Promise<boolean> {
  if (!process.stdin.isTTY) return false;
  const rl = createInterface({ input: process.stdin, output: process.stderr });
  try {
    // A second Ctrl-C at the prompt means no.
    const answer = await new Promise<string>((resolve) => {
      rl.once('SIGINT', () => resolve('n'));
      rl.question(question).then(resolve, () => resolve('n'));
    });
    return /^y(es)?$/i.test(answer.trim());
  } finally {
    rl.close();
  }
}

export interface MigrationCliIo {
  out: Output;
  /** How --wait follows; tests replace the terminal parts. */
  follow?: Partial<Pick<FollowInput, 'view' | 'confirm' | 'onInterrupt' | 'intervalMs'>>;
}

export async function runMigrationCli(argv: string[], io: MigrationCliIo): Promise<number> {
  const { values, positionals } = parseCommandLine(argv, OPTIONS);
  const [command, sub, arg, extra] = positionals;
  const { out } = io;
  if (extra !== undefined) throw new CliError(`unexpected argument ${JSON.stringify(extra)}; run novacron --help`);
  const api = apiClientFor(values.api);

  if (command === 'vm' && sub === 'migrate') {
    if (!arg) throw new CliError('usage: novacron vm migrate ID [--to HOST] [policy options] [--wait]');
    const policy = migrationPolicyFromFlags(values);
    const body = { ...(values.to ? { targetHostId: values.to } : {}), ...(policy ? { policy } : {}) };
    const started = await api.post<Started>(`/v1/vms/${encodeURIComponent(arg)}/migrate`, body, {
      ...(values['request-id'] ? { 'idempotency-key': values['request-id'] } : {}),
    });
    out(`${started.existing ? 'already started' : 'started'} ${started.workflowId} (VM ${started.vmId})`);
    out(started.plan ? planLine(started.plan) : 'plan: still being made');
    if (!values.wait) {
      out(`follow it with novacron migration show ${started.workflowId}`);
      return 0;
    }
    return followMigration({
      api,
      workflowId: started.workflowId,
      out,
      view: process.stderr.isTTY ? terminalView(process.stderr) : plainView((l) => process.stderr.write(`${l}\n`)),
      confirm: confirmOnTerminal,
      onInterrupt: processInterrupts,
      intervalMs: 500,
      ...io.follow,
    });
  }
  if (command === 'migration' && sub === 'list' && !arg) {
    const query = new URLSearchParams();
    if (values.vm) query.set('vmId', values.vm);
    if (values.state) query.set('state', values.state);
    if (values.limit) query.set('limit', values.limit);
    const { migrations } = await api.get<MigrationList>(
      `/v1/migrations${query.size > 0 ? `?${query.toString()}` : ''}`,
    );
    for (const m of migrations) {
      const measured = m.result?.measured ? `  ${m.result.measured.downtimeMs} ms downtime` : '';
      out(
        `${m.createdAt}  ${m.state.padEnd(9)} ${m.vmId}  ${m.sourceHostId} -> ${m.targetHostId ?? '?'}  ${m.id}${measured}`,
      );
    }
    if (migrations.length === 0) out('no migrations match');
    return 0;
  }
  if (command === 'migration' && sub === 'show' && arg) {
    const migration = await api.get<Migration>(`/v1/migrations/${encodeURIComponent(arg)}`);
    if (values.json) out(JSON.stringify(migration, null, 2));
    else describeMigration(migration, out);
    return 0;
  }
  throw new CliError('usage: novacron vm migrate ID [options] | migration list [--vm ID] [--state S] | show ID');
}
