/**
 * Bundles workflow code once per source version. Webpack takes seconds on a small machine; a cached bundle keyed
 * by the hash of the workflow sources lets a restarted worker poll again at once.
 */
import { bundleWorkflowCode, type WorkflowBundleWithSourceMap } from '@temporalio/worker';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { novacronCacheRoot } from '../config/paths';

const ROOT = path.resolve(__dirname, '..');
const WORKFLOWS_DIR = path.join(ROOT, 'workflows');
export const WORKFLOW_INTERCEPTOR_MODULES = [path.join(WORKFLOWS_DIR, 'interceptors.ts')];

function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) return sourceFiles(full);
    return entry.name.endsWith('.ts') && !entry.name.endsWith('.test.ts') ? [full] : [];
  });
}

function bundleKey(): string {
  const hash = createHash('sha256');
  const sdkVersion = (
    JSON.parse(readFileSync(require.resolve('@temporalio/workflow/package.json'), 'utf8')) as {
      version: string;
    }
  ).version;
  hash.update(sdkVersion);
  // Workflows import shared pure modules from elsewhere (types only from activities), so hash those too.
  for (const file of [...sourceFiles(WORKFLOWS_DIR), ...sourceFiles(path.join(ROOT, 'activities'))].sort()) {
    hash.update(file.slice(ROOT.length));
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
  const file = path.join(cacheDir, `workflow-bundle-${bundleKey()}.json`);
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
