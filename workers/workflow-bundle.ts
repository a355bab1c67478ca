/**
 * Bundles workflow code once per source version. Webpack takes seconds on a small machine; a cached bundle keyed
 * by what goes into it lets a restarted worker poll again at once.
 */
import { bundleWorkflowCode, type WorkflowBundleWithSourceMap } from '@temporalio/worker';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { isBuiltin } from 'node:module';
import path from 'node:path';
import { novacronCacheRoot } from '../config/paths';

const ROOT = path.resolve(__dirname, '..');
const WORKFLOWS_DIR = path.join(ROOT, 'workflows');
export const WORKFLOW_INTERCEPTOR_MODULES = [path.join(WORKFLOWS_DIR, 'interceptors.ts')];

/**
 * The folders whose code webpack bundles: lint lets workflows/ reach only domain/ by value (activities and config
 * only as types, which compile away), so these two are all the bundle's own source.
 */
const BUNDLED_DIRS = ['workflows', 'domain'];
/** In every bundle whether imported or not (the workflow runtime), or producing it (webpack and swc come with it). */
const ALWAYS_HASHED_PACKAGES = ['@temporalio/workflow', '@temporalio/worker'];

const SPECIFIER_PATTERN = /\b(?:from|import)\s*['"]([^'"]+)['"]/g;

function sourceFiles(dir: string): string[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) return sourceFiles(full);
    return entry.name.endsWith('.ts') && !entry.name.endsWith('.test.ts') ? [full] : [];
  });
}

/** `zod/mini` → `zod`, `@temporalio/common/lib/x` → `@temporalio/common`; relative paths and built-ins → none. */
function packageName(specifier: string): string | undefined {
  if (specifier.startsWith('.') || path.isAbsolute(specifier) || isBuiltin(specifier)) return undefined;
  const parts = specifier.split('/');
  return specifier.startsWith('@') ? parts.slice(0, 2).join('/') : parts[0];
}

/** Node's lookup for a dependency of code in `fromDir`: the nearest node_modules/<name> up the tree. */
function packageDir(name: string, fromDir: string): string | undefined {
  for (let dir = fromDir; ; dir = path.dirname(dir)) {
    const candidate = path.join(dir, 'node_modules', name);
    if (existsSync(path.join(candidate, 'package.json'))) return candidate;
    if (path.dirname(dir) === dir) return undefined;
  }
}

interface PackageJson {
  name?: string;
  version?: string;
  dependencies?: Record<string, string>;
  optionalDependencies?: Record<string, string>;
  peerDependencies?: Record<string, string>;
}

/**
 * `name@version` of every installed package the bundle can contain: the ones the bundled sources import, the
 * workflow runtime and the bundler, and all their dependencies as installed (a caret range can move under an
 * unchanged direct version). Reading the installed package.json files, not package-lock.json, sees what webpack
 * will really read, also after an `npm install` that did not touch the lock file.
 */
function bundledPackageVersions(root: string, sources: string[]): string[] {
  const queue: Array<{ name: string; fromDir: string }> = ALWAYS_HASHED_PACKAGES.map((name) => ({
    name,
    fromDir: root,
  }));
  for (const file of sources) {
    for (const match of readFileSync(file, 'utf8').matchAll(SPECIFIER_PATTERN)) {
      const name = packageName(match[1] ?? '');
      if (name) queue.push({ name, fromDir: path.dirname(file) });
    }
  }
  const seen = new Map<string, string>();
  const missing = new Set<string>();
  for (let next = queue.shift(); next; next = queue.shift()) {
    const dir = packageDir(next.name, next.fromDir);
    if (!dir) {
      // Another platform's optional build or an unmet peer: that it is absent shapes the bundle too.
      missing.add(`${next.name}@missing`);
      continue;
    }
    if (seen.has(dir)) continue;
    const pkg = JSON.parse(readFileSync(path.join(dir, 'package.json'), 'utf8')) as PackageJson;
    seen.set(dir, `${next.name}@${pkg.version ?? 'unversioned'}`);
    const deps = { ...pkg.peerDependencies, ...pkg.optionalDependencies, ...pkg.dependencies };
    for (const name of Object.keys(deps)) queue.push({ name, fromDir: dir });
  }
  return [...new Set([...seen.values(), ...missing])].sort();
}

/** The cache key: the bundled sources and the versions of every package they can pull into the bundle. */
export function workflowBundleKey(root: string = ROOT): string {
  const sources = BUNDLED_DIRS.flatMap((dir) => sourceFiles(path.join(root, dir))).sort();
  const hash = createHash('sha256');
  for (const pkg of bundledPackageVersions(root, sources)) hash.update(`${pkg}\n`);
  for (const file of sources) {
    hash.update(path.relative(root, file));
    hash.update(readFileSync(file));
  }
  return hash.digest('hex').slice(0, 16);
}

/** The per-user build cache shared with the Temporal binary: build artefacts, never state. */
export function defaultCacheDir(): string {
  return path.join(novacronCacheRoot(), 'workflow-bundles');
}

export async function loadWorkflowBundle(
  input: { cacheDir?: string; log?: (msg: string) => void } = {},
): Promise<WorkflowBundleWithSourceMap> {
  const cacheDir = input.cacheDir ?? defaultCacheDir();
  const file = path.join(cacheDir, `workflow-bundle-${workflowBundleKey()}.json`);
  if (existsSync(file)) return JSON.parse(readFileSync(file, 'utf8')) as WorkflowBundleWithSourceMap;
  input.log?.('bundling workflow code (once per source change)');
  const bundle = await bundleWorkflowCode({
    workflowsPath: require.resolve(WORKFLOWS_DIR),
    workflowInterceptorModules: WORKFLOW_INTERCEPTOR_MODULES,
    logger: {
      log: () => undefined,
      trace: () => undefined,
      debug: () => undefined,
      info: () => undefined,
      warn: () => undefined,
      error: () => undefined,
    },
  });
  try {
    mkdirSync(cacheDir, { recursive: true });
    const tmp = `${file}.${process.pid}.tmp`;
    writeFileSync(tmp, JSON.stringify(bundle));
    renameSync(tmp, file);
  } catch (err) {
    // A read-only home only costs the next start another bundling pass.
    input.log?.(`could not cache the workflow bundle in ${cacheDir}: ${(err as Error).message}`);
  }
  return bundle;
}
