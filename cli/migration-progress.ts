/**
 * `novacron vm migrate --wait`: follows a migration to its end with a live progress line on stderr (cli-progress
 * draws it on a terminal; elsewhere each phase and escalation is a plain line), and lets Ctrl-C choose between
 * cancelling the migration and detaching from it. The rendering is pure, so tests check the lines themselves.
 */
import { Format, MultiBar, type SingleBar } from 'cli-progress';
import { setTimeout as sleep } from 'node:timers/promises';
import type { MigrationEscalation, MigrationProgress, MigrationResult } from '../domain/migration';
import { mib, mibPerSecond } from '../domain/migration-plan';
import type { MigrationRecord } from '../store/migration-records';
import { CliError, type ApiClient } from './api-client';
import type { WorkflowDetail } from './follow-workflow';

/** `42 s`, `3 min 05 s`, `1 h 02 min`: an ETA is read at a glance, not to the millisecond. */
export function formatDuration(ms: number): string {
  const seconds = Math.max(0, Math.round(ms / 1000));
  if (seconds < 60) return `${seconds} s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes} min ${String(seconds % 60).padStart(2, '0')} s`;
  return `${Math.floor(minutes / 60)} h ${String(minutes % 60).padStart(2, '0')} min`;
}

/**
 * How much of the migration is behind it: what is left of the guest's memory, not what was sent, since pre-copy
 * sends dirtied pages again and the bytes sent can pass the total.
 */
export function progressFraction(progress: MigrationProgress): number | undefined {
  const { dataTotalBytes: total, dataRemainingBytes: remaining } = progress;
  if (!total || remaining === undefined) return undefined;
  return Math.min(1, Math.max(0, 1 - remaining / total));
}

/** One line: phase, bar and percentage once libvirt reports data, pass, throughput, what is left and the ETA. */
export function progressLine(progress: MigrationProgress, bar: (fraction: number) => string): string {
  const parts: string[] = [progress.phase];
  const fraction = progressFraction(progress);
  if (fraction !== undefined) parts.push(`${bar(fraction)} ${Math.floor(fraction * 100)}%`);
  if (progress.pass !== undefined) parts.push(`pass ${progress.pass}`);
  if (progress.throughputBytesPerSecond !== undefined) parts.push(mibPerSecond(progress.throughputBytesPerSecond));
  if (progress.dataRemainingBytes !== undefined) parts.push(`${mib(progress.dataRemainingBytes)} left`);
  if (progress.etaMs !== undefined) parts.push(`ETA ${formatDuration(progress.etaMs)}`);
  return parts.join(' | ');
}

/** A convergence-control step as the operator reads it: which, when, to what, and why. */
export function escalationLine(step: MigrationEscalation): string {
  const what =
    step.kind === 'raise-downtime' && step.value !== undefined
      ? `max downtime raised to ${step.value} ms`
      : step.kind === 'auto-converge'
        ? `auto-converge${step.value !== undefined ? ` (vCPUs throttled ${step.value}%)` : ''}`
        : step.kind === 'post-copy'
          ? 'switched to post-copy'
          : step.kind === 'abort'
            ? 'aborted'
            : step.kind;
  return `escalation ${step.seq} at pass ${step.pass} (${mib(step.dataRemainingBytes)} left): ${what}: ${step.reason}`;
}

/** The figures libvirt measured for a completed migration, or how it ended for another outcome. */
export function resultLine(result: MigrationResult): string {
  if (result.outcome !== 'completed') {
    return `${result.outcome}: ${result.reason ?? `the VM runs on ${result.finalHostId}`}`;
  }
  const figures = result.measured
    ? `, downtime ${result.measured.downtimeMs} ms, ${mib(result.measured.bytes)} in ${result.measured.passes} passes`
    : '';
  const steps = result.escalations.length > 0 ? `, ${result.escalations.length} escalation steps` : '';
  return `completed: VM ${result.vmId} runs on ${result.finalHostId} after ${formatDuration(result.workflowMs)}${figures}${steps}`;
}

/** Where the progress goes: a redrawn bar on a terminal, plain lines elsewhere. */
export interface ProgressView {
  update(progress: MigrationProgress): void;
  /** A line that stays (an escalation step, a notice), above the bar. */
  line(text: string): void;
  /** Takes the bar off the screen, so a prompt or the final line has the terminal to itself. */
  stop(): void;
}

/** cli-progress's MultiBar, whose log() keeps lines above the bar it redraws. */
export function terminalView(stream: NodeJS.WriteStream): ProgressView {
  let multi: MultiBar | undefined;
  let bar: SingleBar | undefined;
  const start = () => {
    multi = new MultiBar({
      stream,
      hideCursor: true,
      clearOnComplete: true,
      gracefulExit: false,
      format: (options, _params, payload: { progress?: MigrationProgress }) =>
        payload.progress ? progressLine(payload.progress, (f) => Format.BarFormat(f, options)) : 'starting',
    });
    bar = multi.create(1, 0, {});
  };
  return {
    update(progress) {
      if (!bar) start();
      bar!.update(progressFraction(progress) ?? 0, { progress });
    },
    line(text) {
      if (multi) multi.log(`${text}\n`);
      else stream.write(`${text}\n`);
    },
    stop() {
      multi?.stop();
      multi = undefined;
      bar = undefined;
    },
  };
}

/** For a log or a pipe: a line for each new phase; the bar's figures would be noise there. */
export function plainView(write: (line: string) => void): ProgressView {
  let phase: string | undefined;
  return {
    update(progress) {
      if (progress.phase !== phase) write(progressLine(progress, () => ''));
      phase = progress.phase;
    },
    line: write,
    stop() {},
  };
}

export interface FollowInput {
  api: Pick<ApiClient, 'get' | 'post'>;
  workflowId: string;
  view: ProgressView;
  /** The final line of a completed migration. */
  out: (line: string) => void;
  /** Asks a yes/no question; false when nobody can answer. */
  confirm: (question: string) => Promise<boolean>;
  /** Calls the handler on each Ctrl-C; returns the function that stops listening. */
  onInterrupt: (handler: () => void) => () => void;
  intervalMs: number;
}

/** Exit code of a migration followed to its end; anything but completion is a one-line CliError. */
export async function followMigration(input: FollowInput): Promise<number> {
  const { api, workflowId, view } = input;
  const path = `/v1/workflows/${encodeURIComponent(workflowId)}`;
  let interrupted = false;
  let wake: (() => void) | undefined;
  const stopListening = input.onInterrupt(() => {
    interrupted = true;
    wake?.();
  });
  let cancelling = false;
  let shownEscalations = 0;
  try {
    for (;;) {
      if (interrupted) {
        interrupted = false;
        view.stop();
        const detach = new CliError(
          `detached from ${workflowId}; it goes on: novacron migration show ${workflowId}`,
          130,
        );
        if (cancelling || !(await input.confirm(`cancel migration ${workflowId}? [y/N] `))) throw detach;
        await api.post(`${path}/cancel`, {});
        cancelling = true;
        view.line(`cancel requested; following ${workflowId} until it ends (Ctrl-C again detaches)`);
      }
      const detail = await api.get<WorkflowDetail>(path);
      const progress = detail.progress as MigrationProgress | undefined;
      for (const step of progress?.escalations.slice(shownEscalations) ?? []) view.line(escalationLine(step));
      shownEscalations = Math.max(shownEscalations, progress?.escalations.length ?? 0);
      if (detail.status !== 'RUNNING') {
        view.stop();
        return await outcome(api, detail);
      }
      if (progress) view.update(progress);
      await Promise.race([sleep(input.intervalMs), new Promise<void>((resolve) => (wake = resolve))]);
    }
  } finally {
    stopListening();
    view.stop();
  }

  async function outcome(apiClient: FollowInput['api'], detail: WorkflowDetail): Promise<number> {
    // A failure carries the result in its details when the workflow got as far as settling the VM.
    const result = (detail.result ?? detail.failure?.details?.[0]) as MigrationResult | undefined;
    if (detail.status === 'COMPLETED' && result?.outcome === 'completed') {
      input.out(resultLine(result));
      return 0;
    }
    if (result?.outcome) throw new CliError(resultLine(result), 1);
    if (detail.status === 'FAILED') throw new CliError(`failed: ${detail.failure?.message ?? 'no reason given'}`, 1);
    // Cancelled or terminated without a result: the record says where the VM was left.
    const record = await apiClient
      .get<MigrationRecord>(`/v1/migrations/${encodeURIComponent(workflowId)}`)
      .catch(() => undefined);
    const where = record?.finalHostId ? `; the VM runs on ${record.finalHostId}` : '';
    throw new CliError(`${detail.status.toLowerCase()}${where}`, 1);
  }
}
