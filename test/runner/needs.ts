/**
 * Which prerequisites a selection of test files needs, from what the files import: one whose imports reach the
 * libvirt harness needs libvirt, QEMU and root, one that reaches the certificate code needs openssl. A path to a
 * TypeScript entry in a string ('workers/stack.ts', spawned as a process) counts as an import, so a test that
 * runs `npm start` needs what `npm start` needs. Every run needs Node, the Temporal server the runner starts and
 * room for its scratch files.
 */
import { existsSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import type { Prerequisite } from '../../workers/prerequisites';

const TRIGGERS: ReadonlyArray<[file: string, needs: Prerequisite[]]> = [
  ['native/libvirt/harness.ts', ['hypervisors']],
  // The harness loads it whether or not a test asks for host networks (`network: true`, an option that imports
  // cannot show), so every harness test needs iproute2: one line in the Set-up list, against a test that fails
  // halfway for want of `ip`.
  ['native/libvirt/harness-network.ts', ['network']],
  // Reached from the stack too (workers/test-guest-image.ts): test/e2e/stack.test.ts walks the README's migration
  // on the test guest the stack offers, which the stack builds only where these packages are.
  ['guest/build.ts', ['guest']],
  ['native/dwcp/certs.ts', ['openssl']],
];
const EVERY_RUN: Prerequisite[] = ['node', 'temporal', 'disk'];
// cli/main.ts imports the stack for `novacron up` alone; a test that drives the other commands starts no stack. A
// test that does start it names the entry or imports it itself, and then it is followed.
const FOLLOWED_FROM_TESTS_ONLY = new Set(['workers/stack.ts']);

// Type-only imports load nothing at run time.
const TYPE_ONLY = /\b(?:import|export)\s+type\s[^;]*?from\s*['"][^'"]+['"]/g;
const MODULE_SPECIFIER = /(?:\bfrom\s*|\bimport\s*\(\s*|\brequire\s*\(\s*|\bimport\s+)['"](\.{1,2}\/[^'"]+)['"]/g;
const ENTRY_PATH = /['"]((?:\.{1,2}\/)?[\w@-]+(?:\/[\w@.-]+)*\.ts)['"]/g;

function isFile(file: string): boolean {
  return existsSync(file) && statSync(file).isFile();
}

function resolveModule(fromDir: string, specifier: string): string | undefined {
  const base = path.resolve(fromDir, specifier);
  return [base, `${base}.ts`, path.join(base, 'index.ts')].find(
    (candidate) => candidate.endsWith('.ts') && isFile(candidate),
  );
}

const isTestCode = (relative: string) => relative.startsWith('test/') || relative.endsWith('.test.ts');

/** The files a set of test files loads or starts, themselves included. */
export function importClosure(entries: string[], root: string): Set<string> {
  const seen = new Set<string>();
  const pending = entries.map((entry) => path.resolve(entry));
  while (pending.length > 0) {
    const file = pending.pop()!;
    if (seen.has(file)) continue;
    seen.add(file);
    const fromTest = isTestCode(path.relative(root, file).split(path.sep).join('/'));
    const source = readFileSync(file, 'utf8').replace(TYPE_ONLY, '');
    for (const [, specifier] of source.matchAll(MODULE_SPECIFIER)) {
      const resolved = resolveModule(path.dirname(file), specifier!);
      const relative = resolved && path.relative(root, resolved).split(path.sep).join('/');
      if (resolved && (fromTest || !FOLLOWED_FROM_TESTS_ONLY.has(relative!))) pending.push(resolved);
    }
    for (const [, entry] of source.matchAll(ENTRY_PATH)) {
      const resolved = [path.resolve(path.dirname(file), entry!), path.resolve(root, entry!)].find(isFile);
      if (resolved) pending.push(resolved);
    }
  }
  return seen;
}

export function prerequisitesFor(files: string[], root: string): Prerequisite[] {
  const closure = importClosure(files, root);
  const needs = new Set<Prerequisite>(EVERY_RUN);
  for (const [trigger, triggered] of TRIGGERS) {
    if (closure.has(path.join(root, trigger))) for (const need of triggered) needs.add(need);
  }
  return [...needs];
}
