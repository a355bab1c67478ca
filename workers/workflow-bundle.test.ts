import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { beforeEach, describe, test } from 'node:test';
import { workflowBundleKey } from './workflow-bundle';

/** A project tree as the key sees it: sources under workflows/ and domain/, packages under node_modules/. */
let root: string;

function write(relative: string, text: string): void {
  const file = path.join(root, relative);
  mkdirSync(path.dirname(file), { recursive: true });
  writeFileSync(file, text);
}

function installPackage(name: string, version: string, dependencies: Record<string, string> = {}, under = ''): void {
  write(path.join(under, 'node_modules', name, 'package.json'), JSON.stringify({ name, version, dependencies }));
}

beforeEach(() => {
  root = mkdtempSync(path.join(os.tmpdir(), 'novacron-bundle-key-'));
  write(
    'workflows/index.ts',
    "import { proxyActivities } from '@temporalio/workflow';\nimport { spec } from '../domain/spec';\n",
  );
  write(
    'domain/spec.ts',
    "import { z } from 'zod';\nimport { createHash } from 'node:crypto';\nexport const spec = z.string();\n",
  );
  installPackage('@temporalio/workflow', '1.24.0', { '@temporalio/common': '1.24.0' });
  installPackage('@temporalio/common', '1.24.0', { long: '^5.3.2' });
  installPackage('long', '5.3.2');
  installPackage('@temporalio/worker', '1.24.0');
  installPackage('zod', '4.6.7');
  installPackage('pg', '8.23.1');
});

/** What changes what the bundle holds, each applied to the tree of beforeEach. */
const CHANGES: Array<[what: string, change: () => void]> = [
  ['a package the domain code imports changes version', () => installPackage('zod', '4.6.8')],
  ['a dependency of a dependency changes version', () => installPackage('long', '5.3.3')],
  ['the bundler changes version', () => installPackage('@temporalio/worker', '1.24.1')],
  ['a domain source changes', () => write('domain/spec.ts', "import { z } from 'zod';\nexport const spec = 1;\n")],
];

describe('workflowBundleKey', () => {
  for (const [what, change] of CHANGES) {
    test(`changes when ${what}`, () => {
      const before = workflowBundleKey(root);
      change();
      assert.notEqual(workflowBundleKey(root), before);
    });
  }

  test('follows a nested copy where Node would resolve it', () => {
    const before = workflowBundleKey(root);
    // The SDK gets its own long; the top-level one is no longer in the bundle.
    installPackage('long', '5.2.0', {}, 'node_modules/@temporalio/common');
    const nested = workflowBundleKey(root);
    assert.notEqual(nested, before);
    installPackage('long', '5.9.9');
    assert.equal(workflowBundleKey(root), nested);
  });

  test('stays put for tests, other folders and packages the bundle cannot contain', () => {
    const before = workflowBundleKey(root);
    write('domain/spec.test.ts', "import pg from 'pg';\n");
    write('activities/things.ts', "import pg from 'pg';\n");
    installPackage('pg', '9.0.0');
    assert.equal(workflowBundleKey(root), before);
  });

  test('an import of a package that is not installed still gives a key, which installing it changes', () => {
    write('domain/extra.ts', "import { thing } from 'not-installed/sub';\n");
    const before = workflowBundleKey(root);
    installPackage('not-installed', '1.0.0');
    assert.notEqual(workflowBundleKey(root), before);
  });
});
