/**
 * `novacron`: the operator CLI. Every command but `up` and `config check` talks to the API. Errors end with exit
 * status != 0 and one readable line on stderr.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { checkConfigFile, ConfigError, loadConfig } from '../config/load-config';
import { createCertificateAuthority, issueHostCertificate } from '../native/dwcp/certs';
import { systemProbes, stackContext } from '../workers/prerequisite-probes';
import { checkPrerequisites, formatCheck } from '../workers/prerequisites';
import { runStackFromCli } from '../workers/stack';
import type { z } from 'zod';
import type { auditListSchema } from '../api/routes/audit';
import type { createdTokenSchema, tokenListSchema, tokenSchema } from '../api/routes/tokens';
import type { cancelRequestedSchema, workflowListSchema } from '../api/routes/workflows';
import type { workflowStartedSchema } from '../api/schemas';
import { apiClientFor, CliError, parseCommandLine, type ApiClient } from './api-client';
import { FLEET_USAGE, runFleetCli } from './fleet-commands';
import type { WorkflowDetail } from './follow-workflow';
import { IMAGE_USAGE, runImageCli } from './image-commands';
import { MIGRATION_USAGE, runMigrationCli } from './migration-commands';

const USAGE = `usage: novacron <command> [options]

commands:
  up [--config FILE]                          run the whole stack (same as npm start)
  doctor [--config FILE]                      check this machine's prerequisites; one line with the fix for each
  init [--request-id ID] [--disable C,...] [--wait]
                                              start cluster initialization (idempotent by request id)
  workflow show ID [--json]                   status, result or failure, progress, pending activities
  workflow list [--type T] [--status S] [--limit N]
  workflow cancel ID                          request cancellation of a running workflow
  config check FILE                           validate a config file (with the profile it names)
  token create NAME --role R[,R] [--expires 30d]
                                              create an API token (admin); its secret is printed once
  token list [--include-revoked]              API tokens, never their secrets (admin)
  token revoke NAME|ID                        revoke a token; it is refused from the next request on (admin)
  audit [--actor A] [--workflow ID] [--limit N]
                                              the audit log, newest first (admin)
  certs --dir DIR --host ID[,ID] [--ip IP,...] [--dns NAME,...]
                                              a private CA in DIR/ca (made once) and a certificate per host
                                              for DWCP mTLS, the API's HTTPS and Temporal mTLS
${FLEET_USAGE}
${MIGRATION_USAGE}
${IMAGE_USAGE}

options:
  --api URL     the API base URL (default $NOVACRON_API_URL or http://127.0.0.1:8080)
                the API token comes from $NOVACRON_API_TOKEN
  -h, --help    this text`;

type Output = (line: string) => void;

interface BootReportLike {
  status: string;
  totalMs?: number;
  components: Array<{
    name: string;
    phase: string;
    level: number;
    status: string;
    attempts: number;
    durationMs: number;
    error?: string;
  }>;
}

function isBootReport(value: unknown): value is BootReportLike {
  return typeof value === 'object' && value !== null && Array.isArray((value as BootReportLike).components);
}

function printBootReport(report: BootReportLike, out: Output): void {
  out(`boot ${report.status}${report.totalMs !== undefined ? ` in ${report.totalMs} ms` : ''}`);
  for (const c of report.components) {
    const error = c.error ? `  ${c.error}` : '';
    out(
      `  ${c.phase.padEnd(9)} L${c.level} ${c.name.padEnd(20)} ${c.status.padEnd(9)} ${String(c.durationMs).padStart(6)} ms  x${c.attempts}${error}`,
    );
  }
}

function printWorkflow(detail: WorkflowDetail, out: Output): void {
  out(`${detail.workflowId}  ${detail.type}  ${detail.status}`);
  out(`  started ${detail.startTime}${detail.closeTime ? `, closed ${detail.closeTime}` : ''}`);
  if (detail.failure)
    out(`  failure: ${detail.failure.message}${detail.failure.type ? ` (${detail.failure.type})` : ''}`);
  for (const a of detail.pendingActivities) {
    out(`  pending ${a.activityType} attempt ${a.attempt}${a.lastFailure ? `: ${a.lastFailure}` : ''}`);
  }
  const report = detail.result ?? detail.progress ?? detail.failure?.details?.[0];
  if (isBootReport(report)) printBootReport(report, out);
  else if (detail.result !== undefined) out(`  result: ${JSON.stringify(detail.result)}`);
}

async function waitForClose(api: ApiClient, workflowId: string, out: Output): Promise<WorkflowDetail> {
  let last = '';
  for (;;) {
    const detail = await api.get<WorkflowDetail>(`/v1/workflows/${encodeURIComponent(workflowId)}`);
    if (detail.status !== 'RUNNING') return detail;
    if (isBootReport(detail.progress)) {
      const done = detail.progress.components.filter((c) => c.status !== 'pending' && c.status !== 'running').length;
      const line = `  ${done}/${detail.progress.components.length} components checked`;
      if (line !== last) out(line);
      last = line;
    }
    await new Promise((r) => setTimeout(r, 250));
  }
}

type TokenInfo = z.infer<typeof tokenSchema>;

function describeToken(t: TokenInfo): string {
  const state = t.revokedAt ? `revoked ${t.revokedAt}` : t.expiresAt ? `expires ${t.expiresAt}` : 'no expiry';
  return `${t.id}  ${t.name.padEnd(20)} ${t.roles.join(',').padEnd(16)} ${state}`;
}

function list(value: string): string[] {
  return value
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
}

const DURATION_UNITS: Record<string, number> = { s: 1, m: 60, h: 3600, d: 86_400 };

function parseDuration(text: string): number {
  const match = /^(\d+)([smhd])$/.exec(text);
  if (!match) throw new CliError(`--expires ${text}: expected a number and a unit (s, m, h, d), e.g. 30d`);
  return Number(match[1]) * DURATION_UNITS[match[2]!]!;
}

export async function runCli(argv: string[], out: Output = (l) => process.stdout.write(`${l}\n`)): Promise<number> {
  // Hosts, VMs, migrations and images parse their own options: they have many, and none of the other commands'.
  const help = argv.includes('--help') || argv.includes('-h');
  if (((argv[0] === 'vm' && argv[1] === 'migrate') || argv[0] === 'migration') && !help) {
    return runMigrationCli(argv, { out });
  }
  if ((argv[0] === 'host' || argv[0] === 'vm' || argv[0] === 'failover') && !help) {
    return runFleetCli(argv, out);
  }
  if ((argv[0] === 'image' || argv[0] === 'link') && !help) {
    return runImageCli(argv, out);
  }
  const parsed = parseCommandLine(argv, {
    api: { type: 'string' },
    config: { type: 'string' },
    'request-id': { type: 'string' },
    disable: { type: 'string' },
    wait: { type: 'boolean' },
    json: { type: 'boolean' },
    type: { type: 'string' },
    status: { type: 'string' },
    limit: { type: 'string' },
    role: { type: 'string' },
    actor: { type: 'string' },
    workflow: { type: 'string' },
    expires: { type: 'string' },
    'include-revoked': { type: 'boolean' },
    dir: { type: 'string' },
    host: { type: 'string' },
    ip: { type: 'string' },
    dns: { type: 'string' },
    help: { type: 'boolean', short: 'h' },
  });
  const { values, positionals } = parsed;
  const [command, sub, arg] = positionals;
  if (values.help || !command) {
    out(USAGE);
    return values.help ? 0 : 2;
  }
  const api = apiClientFor(values.api);

  switch (command) {
    case 'up': {
      await runStackFromCli(values.config);
      return 0;
    }
    case 'doctor': {
      const config = loadConfig(values.config ? { file: values.config } : {});
      const results = await checkPrerequisites(systemProbes(), stackContext(config));
      for (const result of results) out(formatCheck(result));
      const failed = results.filter((r) => !r.ok).length;
      out(
        `novacron doctor: ${failed === 0 ? 'all' : `${failed} of`} ${results.length} checks ${failed === 0 ? 'pass' : 'fail'}`,
      );
      return failed === 0 ? 0 : 1;
    }
    case 'config': {
      if (sub !== 'check' || !arg) throw new CliError('usage: novacron config check FILE');
      const config = checkConfigFile(arg);
      out(`${arg}: ok (profile ${config.system.profile}, dwcp mode ${config.dwcp.mode}, node ${config.system.nodeId})`);
      return 0;
    }
    case 'init': {
      const body: Record<string, unknown> = {};
      if (values['request-id']) body.requestId = values['request-id'];
      if (values.disable) body.disabledComponents = values.disable.split(',').map((s) => s.trim());
      const started = await api.post<z.infer<typeof workflowStartedSchema>>('/v1/cluster/init', body);
      out(`${started.existing ? 'already started' : 'started'} ${started.workflowId}`);
      if (!values.wait) return 0;
      const detail = await waitForClose(api, started.workflowId, out);
      printWorkflow(detail, out);
      return detail.status === 'COMPLETED' ? 0 : 1;
    }
    case 'workflow': {
      if (sub === 'show' && arg) {
        const detail = await api.get<WorkflowDetail>(`/v1/workflows/${encodeURIComponent(arg)}`);
        if (values.json) out(JSON.stringify(detail, null, 2));
        else printWorkflow(detail, out);
        return 0;
      }
      if (sub === 'list') {
        const query = new URLSearchParams();
        if (values.type) query.set('type', values.type);
        if (values.status) query.set('status', values.status.toUpperCase());
        if (values.limit) query.set('limit', values.limit);
        const { workflows } = await api.get<z.infer<typeof workflowListSchema>>(
          `/v1/workflows${query.size > 0 ? `?${query.toString()}` : ''}`,
        );
        for (const w of workflows) out(`${w.startTime}  ${w.status.padEnd(10)} ${w.type.padEnd(20)} ${w.workflowId}`);
        if (workflows.length === 0) out('no workflows match');
        return 0;
      }
      if (sub === 'cancel' && arg) {
        const result = await api.post<z.infer<typeof cancelRequestedSchema>>(
          `/v1/workflows/${encodeURIComponent(arg)}/cancel`,
          {},
        );
        out(`cancel requested for ${result.workflowId}`);
        return 0;
      }
      throw new CliError('usage: novacron workflow show ID | list [--type T] [--status S] | cancel ID');
    }
    case 'token': {
      if (sub === 'create' && arg) {
        if (!values.role) throw new CliError('usage: novacron token create NAME --role viewer|operator|admin');
        const created = await api.post<z.infer<typeof createdTokenSchema>>('/v1/tokens', {
          name: arg,
          roles: list(values.role),
          ...(values.expires ? { expiresInSeconds: parseDuration(values.expires) } : {}),
        });
        out(`created ${describeToken(created)}`);
        out(`NOVACRON_API_TOKEN=${created.token}`);
        out('the secret is shown only this once');
        return 0;
      }
      if (sub === 'list') {
        const { tokens } = await api.get<z.infer<typeof tokenListSchema>>(
          `/v1/tokens${values['include-revoked'] ? '?includeRevoked=true' : ''}`,
        );
        for (const t of tokens) out(describeToken(t));
        if (tokens.length === 0) out('no tokens');
        return 0;
      }
      if (sub === 'revoke' && arg) {
        const revoked = await api.delete<TokenInfo>(`/v1/tokens/${encodeURIComponent(arg)}`);
        out(`revoked ${describeToken(revoked)}`);
        return 0;
      }
      throw new CliError('usage: novacron token create NAME --role R[,R] [--expires 30d] | list | revoke NAME|ID');
    }
    case 'audit': {
      const query = new URLSearchParams();
      if (values.actor) query.set('actor', values.actor);
      if (values.workflow) query.set('workflowId', values.workflow);
      if (values.limit) query.set('limit', values.limit);
      const { entries } = await api.get<z.infer<typeof auditListSchema>>(
        `/v1/audit${query.size > 0 ? `?${query.toString()}` : ''}`,
      );
      for (const e of entries) {
        const extra = [e.target, e.workflowId && `workflow ${e.workflowId}`, e.requestId && `request ${e.requestId}`];
        out(`${e.at}  ${e.outcome.padEnd(9)} ${e.actor}  ${e.action}  ${extra.filter(Boolean).join('  ')}`);
      }
      if (entries.length === 0) out('no audit entries match');
      return 0;
    }
    case 'certs': {
      if (!values.dir || !values.host)
        throw new CliError('usage: novacron certs --dir DIR --host ID[,ID] [--ip IP,...]');
      const caDir = path.join(values.dir, 'ca');
      if (!existsSync(path.join(caDir, 'ca.key'))) {
        await createCertificateAuthority({ dir: caDir, name: 'novacron-ca' });
        out(`created CA ${path.join(caDir, 'ca.crt')} (keep ${path.join(caDir, 'ca.key')} private)`);
      }
      // Local hosts by default, so a development stack works with no flags.
      const ips = values.ip ? list(values.ip) : values.dns ? [] : ['127.0.0.1'];
      const dnsNames = values.dns ? list(values.dns) : values.ip ? [] : ['localhost'];
      for (const hostId of list(values.host)) {
        const cert = await issueHostCertificate({ caDir, hostId, dir: values.dir, ips, dnsNames });
        out(`issued ${cert.certPath} and ${cert.keyPath} for ${[...dnsNames, ...ips].join(', ')}`);
      }
      return 0;
    }
    default:
      throw new CliError(`unknown command "${command}"; run novacron --help`);
  }
}

if (require.main === module) {
  runCli(process.argv.slice(2)).then(
    (code) => {
      process.exitCode = code;
    },
    (err: unknown) => {
      const message = err instanceof Error ? err.message : String(err);
      process.stderr.write(`novacron: ${message.split('\n')[0]}\n`);
      process.exitCode = err instanceof CliError ? err.exitCode : err instanceof ConfigError ? 2 : 1;
    },
  );
}
