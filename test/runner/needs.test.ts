import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { prerequisitesFor } from './needs';

/** A tiny repository: file path → source. */
function repository(files: Record<string, string>): string {
  const root = mkdtempSync(path.join(os.tmpdir(), 'novacron-needs-'));
  for (const [file, source] of Object.entries(files)) {
    mkdirSync(path.dirname(path.join(root, file)), { recursive: true });
    writeFileSync(path.join(root, file), source);
  }
  return root;
}

const root = repository({
  'native/libvirt/harness.ts': "import { x } from './hypervisor-binaries';\nimport { net } from './harness-network';\n",
  'native/libvirt/harness-network.ts': "import { x } from './hypervisor-binaries';\nexport const net = x;\n",
  'guest/build.ts': 'export const build = 1;\n',
  'workers/test-guest-image.ts': "import { build } from '../guest/build';\n",
  'native/libvirt/hypervisor-binaries.ts': 'export const x = 1;\n',
  'native/dwcp/certs.ts': 'export const certs = 1;\n',
  'native/dwcp/index.ts': "export * from './certs';\n",
  'workers/stack.ts':
    "import { start } from '../native/libvirt/harness';\nimport { offer } from './test-guest-image';\n",
  'guest/test-guest.integration.test.ts':
    "import { build } from './build';\nimport { start } from '../native/libvirt/harness';\n",
  'cli/main.ts': "import { runStackFromCli } from '../workers/stack';\nimport { certs } from '../native/dwcp';\n",
  'domain/pure.test.ts': "import { x } from '../native/libvirt/hypervisor-binaries';\n",
  'native/libvirt/driver.integration.test.ts': "import {\n  start,\n} from './harness';\n",
  'types-only.test.ts': "import type { start } from './native/libvirt/harness';\n",
  'cli.test.ts': "import { runCli } from './cli/main';\n",
  'test/e2e/stack.test.ts': "const child = startEntry('workers/stack.ts', env);\n",
  'test/support/fleet.ts': "import { start } from '../../native/libvirt/harness';\n",
  'test/integration/fleet.test.ts': "import { fleet } from '../support/fleet';\n",
});
const needs = (file: string) => prerequisitesFor([path.join(root, file)], root);

test('a pure unit test needs only what every run needs', () => {
  assert.deepEqual(needs('domain/pure.test.ts'), ['node', 'temporal', 'disk']);
});

test('a test whose imports reach the harness needs the hypervisor prerequisites and its host networks', () => {
  const harness = ['node', 'temporal', 'disk', 'hypervisors', 'network'];
  assert.deepEqual(needs('native/libvirt/driver.integration.test.ts'), harness);
  assert.deepEqual(needs('test/integration/fleet.test.ts'), harness);
});

test("a test that builds the test guest needs the build's packages", () => {
  assert.deepEqual(needs('guest/test-guest.integration.test.ts'), [
    'node',
    'temporal',
    'disk',
    'hypervisors',
    'network',
    'guest',
  ]);
});

test('a type-only import loads nothing', () => {
  assert.deepEqual(needs('types-only.test.ts'), ['node', 'temporal', 'disk']);
});

test('an entry a test starts by path counts; the stack the CLI imports for `up` alone does not', () => {
  // The stack offers the test guest, which the end-to-end test boots: what it builds the guest with comes along.
  assert.deepEqual(needs('test/e2e/stack.test.ts'), ['node', 'temporal', 'disk', 'hypervisors', 'network', 'guest']);
  assert.deepEqual(needs('cli.test.ts'), ['node', 'temporal', 'disk', 'openssl']);
});

test('a selection needs what any of its files needs', () => {
  const both = prerequisitesFor([path.join(root, 'domain/pure.test.ts'), path.join(root, 'cli.test.ts')], root);
  assert.deepEqual(both, ['node', 'temporal', 'disk', 'openssl']);
});
