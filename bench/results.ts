/**
 * Results files and the docs sections written from them. A benchmark writes its results file with the run's record
 * (bench/run-metadata.ts) at the top, and every docs section it owns is rendered from that file alone, so that a
 * figure in the docs is always one a committed results file holds, under a line naming the command and the file.
 */
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { ROOT, type RunMetadata, type RunRecorder } from './run-metadata';

/** Paths in docs and results are relative to the repository root, so they read the same on every machine. */
export function repoPath(file: string): string {
  return path.relative(ROOT, file);
}

export interface BenchRunInput {
  outDir: string;
  recorder: RunRecorder;
}

export interface BenchRunOutput {
  file: string;
  /** False for a partial run (filters, a smaller size than the published one): its docs sections stay as they are. */
  publish: boolean;
}

export interface DocSection {
  /** Relative to the repository root. */
  doc: string;
  /** The section lies between `<!-- bench:NAME:start -->` and `<!-- bench:NAME:end -->`. */
  name: string;
  render(file: string): Promise<string>;
}

export interface Benchmark {
  name: string;
  run(input: BenchRunInput): Promise<BenchRunOutput>;
  /** The results file the published sections come from (the newest, for benchmarks that date their files). */
  publishedResults(outDir: string): Promise<string>;
  sections: DocSection[];
}

/**
 * Writes `<dir>/<name>` as JSON with the run's record first, and returns its path; `format` lets a benchmark keep a
 * compact layout of its own.
 */
export async function writeResults(input: {
  dir: string;
  name: string;
  recorder: RunRecorder;
  results: Record<string, unknown>;
  format?: (value: Record<string, unknown>) => string;
}): Promise<string> {
  const value = { run: input.recorder.finish(), ...input.results };
  await mkdir(input.dir, { recursive: true });
  const file = path.join(input.dir, input.name);
  await writeFile(file, input.format ? input.format(value) : `${JSON.stringify(value, null, 2)}\n`);
  return file;
}

/** A results file as its benchmark wrote it; the type is the writer's, as nothing else writes these files. */
export async function readResults<T>(file: string): Promise<T> {
  return JSON.parse(await readFile(file, 'utf8')) as T;
}

function markers(name: string): { start: string; end: string } {
  return { start: `<!-- bench:${name}:start -->`, end: `<!-- bench:${name}:end -->` };
}

/** Replaces what lies between a section's markers; a document without both markers, in order, is an error. */
export function replaceSection(text: string, name: string, body: string): string {
  const { start, end } = markers(name);
  const from = text.indexOf(start);
  const to = text.indexOf(end);
  if (from < 0 || to < from || text.indexOf(start, from + 1) >= 0) {
    throw new Error(`expected exactly one ${start} … ${end} section`);
  }
  return `${text.slice(0, from)}${start}\n${body.trim()}\n${text.slice(to)}`;
}

export async function writeDocSection(section: DocSection, file: string): Promise<string> {
  const doc = path.join(ROOT, section.doc);
  const text = await readFile(doc, 'utf8');
  await writeFile(doc, replaceSection(text, section.name, await section.render(file)));
  return section.doc;
}

const utcMinute = (iso: string): string => `${iso.slice(0, 16).replace('T', ' ')} UTC`;
const load = (values: readonly number[]): string => values.map((v) => v.toFixed(2)).join(' / ');

/**
 * The line that opens every generated section: the command, the results file, and the run's record. Files written
 * before the record existed say so instead of leaving the reader to guess.
 */
export function runLine(input: {
  file: string;
  run?: RunMetadata;
  legacy?: { command: string; date: string; machine: { cpus: number; cpuModel?: string; memoryGiB: number } };
}): string {
  const file = `\`${repoPath(input.file)}\``;
  const { run, legacy } = input;
  if (run) {
    const tree = run.git.dirty
      ? `with ${run.git.changeCount} uncommitted change${run.git.changeCount === 1 ? '' : 's'} in the tree, listed in the file`
      : 'clean tree';
    return (
      `Written by \`${run.command}\` into ${file}. Run ${utcMinute(run.startedAt)} to ${utcMinute(run.finishedAt)} ` +
      `at commit \`${run.git.commit.slice(0, 10)}\` (${tree}) on ${run.machine.cpus} × ${run.machine.cpuModel}, ` +
      `${run.machine.memoryGiB} GiB, ${run.machine.kernel}, Node ${run.machine.node}. Load average (1, 5, 15 min): ` +
      `${load(run.loadAverage.start)} at the start, ${load(run.loadAverage.end)} at the end.`
    );
  }
  if (!legacy) throw new Error(`${input.file} has no run record`);
  const model = legacy.machine.cpuModel ? ` × ${legacy.machine.cpuModel}` : ' cores';
  return (
    `Written by \`${legacy.command}\` into ${file} on ${legacy.date}, ${legacy.machine.cpus}${model}, ` +
    `${legacy.machine.memoryGiB} GiB. That file predates the run record: it names no commit, kernel or load ` +
    'average at the start and end of the run.'
  );
}
