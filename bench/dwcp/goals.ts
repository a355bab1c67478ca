/**
 * The DWCP fast path's goals (issue 11, "Done when"), judged on one results file: each goal's figure is computed
 * from rows of the same run, so a goal is met or missed by what that run measured and nothing else. Loopback rows
 * are datacenter mode, as the goals name it; rows on the capped link are dwcp-auto, the parameters the product
 * picks there by probing the link.
 */
import { findRun, type DwcpBenchRun } from './measure';

export type GoalVerdict = 'met' | 'not met' | 'not measured';

export interface GoalResult {
  goal: string;
  /** The measured ratio, or undefined when a row it needs is missing from the run. */
  measured: number | undefined;
  target: number;
  /** A floor (the ratio must reach the target) or a ceiling (CPU cost). */
  comparison: '≥' | '≤';
  /** The rows the figure comes from, in words. */
  figure: string;
  verdict: GoalVerdict;
}

interface RunsAndLinks {
  runs: DwcpBenchRun[];
  links: Array<{ name: string; rateMbps: number | null }>;
}

const LOOPBACK = 'loopback';
const LOOPBACK_TOOL = 'dwcp-datacenter';
const CAPPED_TOOL = 'dwcp-auto';
const STREAMS = ['stream-random', 'stream-random-4ch', 'stream-image'] as const;

const seconds = (run: DwcpBenchRun): string => `${run.seconds.toFixed(2)} s`;
const cpu = (run: DwcpBenchRun): number => run.senderCpuSeconds + run.receiverCpuSeconds;

/**
 * A goal is met when the ratio reaches its target (`atMost` for a ceiling). The ratio is measured only when every
 * row it needs is in the run.
 */
function judge(input: {
  goal: string;
  target: number;
  atMost?: boolean;
  rows: Array<DwcpBenchRun | undefined>;
  ratio: (rows: DwcpBenchRun[]) => number;
  figure: (rows: DwcpBenchRun[]) => string;
}): GoalResult {
  const comparison = input.atMost === true ? '≤' : '≥';
  const head = { goal: input.goal, target: input.target, comparison } as const;
  const rows = input.rows.filter((r): r is DwcpBenchRun => r !== undefined);
  if (rows.length < input.rows.length) return { ...head, measured: undefined, figure: '', verdict: 'not measured' };
  const measured = input.ratio(rows);
  const met = comparison === '≤' ? measured <= input.target : measured >= input.target;
  return { ...head, measured, figure: input.figure(rows), verdict: met ? 'met' : 'not met' };
}

/** Every goal, in the order the issue lists them; a run without a row a goal needs reports it as not measured. */
export function evaluateDwcpGoals(results: RunsAndLinks): GoalResult[] {
  const row = (link: string, tool: string, scenario: string): DwcpBenchRun | undefined =>
    findRun({ runs: results.runs, link, tool, scenario });
  const throughput = ([run, base]: DwcpBenchRun[]): number => run!.logicalMBps / base!.logicalMBps;
  const against =
    (name: string) =>
    ([run, base]: DwcpBenchRun[]) =>
      `${run!.tool} ${seconds(run!)} against ${name} ${seconds(base!)}`;

  const goals: GoalResult[] = [];
  const first = row(LOOPBACK, LOOPBACK_TOOL, 'first');
  const delta = row(LOOPBACK, LOOPBACK_TOOL, 'delta');
  const rawFirst = row(LOOPBACK, 'raw-tcp', 'first');
  goals.push(
    judge({
      goal: 'loopback first copy, × raw TCP stream',
      target: 1.5,
      rows: [first, rawFirst],
      ratio: throughput,
      figure: against('raw-tcp'),
    }),
    judge({
      goal: 'loopback first copy, × rsync',
      target: 3,
      rows: [first, row(LOOPBACK, 'rsync', 'first')],
      ratio: throughput,
      figure: against('rsync'),
    }),
    judge({
      goal: "loopback v1→v2 delta, × rsync's delta",
      target: 2,
      rows: [delta, row(LOOPBACK, 'rsync', 'delta')],
      ratio: throughput,
      figure: against("rsync's delta"),
    }),
    judge({
      goal: "loopback v1→v2 delta, × DWCP's own first copy",
      target: 5,
      rows: [delta, first],
      ratio: ([d, f]) => f!.seconds / d!.seconds,
      figure: ([d, f]) => `delta ${seconds(d!)} against first copy ${seconds(f!)}`,
    }),
    judge({
      // Both copies carry the same logical bytes (the image), so CPU per GB logical compares as CPU per copy.
      goal: "CPU s per GB logical, both ends, × nc's (loopback first copy)",
      target: 1.5,
      atMost: true,
      rows: [first, rawFirst],
      ratio: ([d, raw]) => cpu(d!) / cpu(raw!),
      figure: ([d, raw]) =>
        `${LOOPBACK_TOOL} ${d!.senderCpuSeconds.toFixed(2)} + ${d!.receiverCpuSeconds.toFixed(2)} CPU s against ` +
        `raw-tcp ${raw!.senderCpuSeconds.toFixed(2)} + ${raw!.receiverCpuSeconds.toFixed(2)}`,
    }),
  );

  for (const scenario of STREAMS) {
    goals.push(
      judge({
        goal: `loopback ${scenario}, × a direct TCP connection`,
        target: 0.8,
        rows: [row(LOOPBACK, LOOPBACK_TOOL, scenario), row(LOOPBACK, 'raw-tcp', scenario)],
        ratio: throughput,
        figure: against('raw-tcp'),
      }),
    );
  }

  const capped = results.links.find((l) => l.rateMbps !== null);
  if (capped !== undefined) {
    const link = capped.name;
    const linkMBps = capped.rateMbps! / 8;
    goals.push(
      judge({
        goal: `${link} first copy, × zstd-1-nc (zstd -1 -T0, nc)`,
        target: 1,
        rows: [row(link, CAPPED_TOOL, 'first'), row(link, 'zstd-1-nc', 'first')],
        ratio: throughput,
        figure: against('zstd-1-nc'),
      }),
      judge({
        goal: `${link} v1→v2 delta, × rsync's delta`,
        target: 2,
        rows: [row(link, CAPPED_TOOL, 'delta'), row(link, 'rsync', 'delta')],
        ratio: throughput,
        figure: against("rsync's delta"),
      }),
    );
    for (const scenario of STREAMS) {
      goals.push(
        judge({
          goal: `${link} ${scenario}, × the link rate (${capped.rateMbps} Mbit/s)`,
          target: 1,
          rows: [row(link, CAPPED_TOOL, scenario), row(link, 'raw-tcp', scenario)],
          ratio: ([run]) => run!.logicalMBps / linkMBps,
          figure: ([run, raw]) =>
            `${CAPPED_TOOL} ${run!.logicalMBps.toFixed(1)} MB/s; a direct TCP connection ${raw!.logicalMBps.toFixed(1)} MB/s`,
        }),
      );
    }
  }
  return goals;
}

/** The goals as a markdown table, for docs/dwcp.md and docs/benchmarks.md. */
export function renderGoalsTable(results: RunsAndLinks): string {
  const goals = evaluateDwcpGoals(results);
  const met = goals.filter((g) => g.verdict === 'met').length;
  return [
    `The issue's goals, judged on this run's medians: ${met} of ${goals.length} met. Loopback rows are ` +
      `${LOOPBACK_TOOL}; rows on the capped link are ${CAPPED_TOOL}, the parameters the product picks there.`,
    '',
    '| goal | target | measured | from | verdict |',
    '| --- | ---: | ---: | --- | --- |',
    ...goals.map((g) => {
      const measured = g.measured === undefined ? '' : `${g.measured.toFixed(2)}×`;
      return `| ${g.goal} | ${g.comparison} ${g.target}× | ${measured} | ${g.figure} | ${g.verdict} |`;
    }),
  ].join('\n');
}
