import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { loadConfig } from '../config/load-config';
import { GUEST_BUILD_BINARIES, GUEST_BUILD_PACKAGES } from '../guest/build-tools';
import { HYPERVISOR_BINARIES, NETWORK_BINARIES } from '../native/libvirt/hypervisor-binaries';
import {
  checkPrerequisites,
  formatCheck,
  satisfiesRange,
  stackPorts,
  type PrerequisiteContext,
  type PrerequisiteProbes,
} from './prerequisites';

/** A machine where everything is in place; each test takes one thing away. */
function machine(overrides: Partial<PrerequisiteProbes> = {}): PrerequisiteProbes {
  return {
    nodeVersion: '20.20.2',
    isRoot: true,
    findExecutable: (name) => `/usr/bin/${name}`,
    goToolchain: () => ({ version: 'go1.26.8', toolchain: 'auto' }),
    temporalBinary: () => ({ path: '/cache/novacron/temporal/abc/novacron-temporal', built: false }),
    hasCaCertificates: () => true,
    portFree: async () => true,
    freeDiskMib: async () => 50_000,
    ...overrides,
  };
}

const context: PrerequisiteContext = {
  nodeRange: '^20.19.0 || ^22.13.0 || >=24',
  goModVersion: '1.26.4',
  ports: [{ key: 'api.port', env: 'NOVACRON_API_PORT', host: '127.0.0.1', port: 8080 }],
  disk: { dir: '/data', minFreeMib: 1024, fix: 'free space there' },
};

async function failures(probes: PrerequisiteProbes, ctx: PrerequisiteContext = context): Promise<string[]> {
  return (await checkPrerequisites(probes, ctx)).filter((r) => !r.ok).map(formatCheck);
}

test('a complete machine passes every check', async () => {
  const results = await checkPrerequisites(machine(), context);
  assert.deepEqual(
    results.filter((r) => !r.ok),
    [],
  );
  assert.deepEqual(
    [...new Set(results.map((r) => r.prerequisite))],
    ['node', 'temporal', 'hypervisors', 'network', 'guest', 'openssl', 'ports', 'disk'],
  );
});

test('a missing qemu-img gives one line with the apt-get command for its package', async () => {
  const probes = machine({ findExecutable: (name) => (name === 'qemu-img' ? undefined : `/usr/bin/${name}`) });
  assert.deepEqual(await failures(probes), [
    '✗ qemu-img not found (local hypervisors); fix: apt-get install -y --no-install-recommends qemu-utils',
  ]);
});

test('several missing programs name each package once, in one line', async () => {
  const probes = machine({ findExecutable: () => undefined });
  assert.deepEqual(await failures(probes), [
    '✗ libvirtd, virtlogd, virsh, qemu-system-x86_64, qemu-img, unshare, setpriv not found (local hypervisors); ' +
      'fix: apt-get install -y --no-install-recommends libvirt-daemon-system libvirt-clients qemu-system-x86 qemu-utils util-linux',
    "✗ ip, tc not found (the harness's host networks); fix: apt-get install -y --no-install-recommends iproute2",
    "✗ gcc, cpio, mkfs.vfat, mcopy, syslinux, apt-get, dpkg-deb not found (the test guest's build); " +
      'fix: apt-get install -y --no-install-recommends gcc cpio dosfstools mtools syslinux apt dpkg',
    '✗ openssl not found (certificates for DWCP, the API and Temporal); ' +
      'fix: apt-get install -y --no-install-recommends openssl',
  ]);
});

test("a missing mcopy names mtools, the test guest build's package", async () => {
  const probes = machine({ findExecutable: (name) => (name === 'mcopy' ? undefined : `/usr/bin/${name}`) });
  assert.deepEqual(await failures(probes), [
    "✗ mcopy not found (the test guest's build); fix: apt-get install -y --no-install-recommends mtools",
  ]);
});

test('a missing tc names iproute2, which the networked harness needs', async () => {
  const probes = machine({ findExecutable: (name) => (name === 'tc' ? undefined : `/usr/bin/${name}`) });
  assert.deepEqual(await failures(probes), [
    "✗ tc not found (the harness's host networks); fix: apt-get install -y --no-install-recommends iproute2",
  ]);
});

test('not root fails the hypervisor check with how to run', async () => {
  assert.deepEqual(await failures(machine({ isRoot: false })), [
    '✗ not root: local hypervisors run libvirtd in mount and PID namespaces; fix: run as root (sudo -E npm start, sudo -E npm test)',
  ]);
});

test('Node.js below the engines range fails and says which Node to install', async () => {
  const lines = await failures(machine({ nodeVersion: '20.15.0' }));
  assert.deepEqual(lines, [
    '✗ Node.js 20.15.0 does not satisfy ^20.19.0 || ^22.13.0 || >=24 (package.json engines); ' +
      'fix: install Node.js 20.19 or later (https://nodejs.org/en/download; Debian 12 ships 18)',
  ]);
});

test('engines ranges: caret stays in its major, >= does not', () => {
  const range = '^20.19.0 || ^22.13.0 || >=24.0.0';
  assert.equal(satisfiesRange('20.19.0', range), true);
  assert.equal(satisfiesRange('v20.20.2', range), true);
  assert.equal(satisfiesRange('20.18.9', range), false);
  assert.equal(satisfiesRange('21.7.0', range), false);
  assert.equal(satisfiesRange('22.12.0', range), false);
  assert.equal(satisfiesRange('22.13.1', range), true);
  assert.equal(satisfiesRange('23.11.0', range), false);
  assert.equal(satisfiesRange('25.1.0', range), true);
  assert.throws(() => satisfiesRange('20.19.0', '~20.19.0'), /cannot read engines range/);
});

test('package.json engines is a range the check can read, and Node 20.15 (zlib.crc32) alone is not enough', () => {
  const manifest = JSON.parse(readFileSync(path.join(__dirname, '..', 'package.json'), 'utf8')) as {
    engines: { node: string };
  };
  assert.equal(satisfiesRange('20.19.0', manifest.engines.node), true);
  assert.equal(satisfiesRange('20.15.0', manifest.engines.node), false, 'ESLint 10 needs 20.19');
});

test('Temporal: a built binary or TEMPORAL_ADDRESS needs no Go at all', async () => {
  const noGo = { goToolchain: () => undefined, hasCaCertificates: () => false };
  assert.deepEqual(await failures(machine({ ...noGo, temporalBinary: () => ({ path: '/cache/t', built: true }) })), []);
  assert.deepEqual(await failures(machine(noGo), { ...context, temporalAddress: 'temporal.example:7233' }), []);
});

test('Temporal: no Go, or Go too old to switch toolchains, says which Go to install', async () => {
  const installGo =
    "fix: install Go 1.21 or later (https://go.dev/dl/; Debian 12's golang-go 1.19 is too old), " +
    'or set TEMPORAL_ADDRESS=host:7233 to use a Temporal cluster';
  assert.deepEqual(await failures(machine({ goToolchain: () => undefined })), [
    `✗ Go not found: it builds the embedded Temporal server, once; ${installGo}`,
  ]);
  assert.deepEqual(await failures(machine({ goToolchain: () => ({ version: 'go1.19.8', toolchain: '' }) })), [
    `✗ go1.19.8 cannot build native/temporal (go 1.26.4) nor fetch a newer Go (that needs Go 1.21); ${installGo}`,
  ]);
});

test('Temporal: Go 1.21+ below go.mod passes when it may fetch the toolchain, fails under GOTOOLCHAIN=local', async () => {
  const switching = await checkPrerequisites(
    machine({ goToolchain: () => ({ version: 'go1.22.12', toolchain: 'auto' }) }),
    context,
    ['temporal'],
  );
  assert.deepEqual(switching.map(formatCheck), [
    '✓ go1.22.12 fetches go1.26.4 through the module proxy, then builds Temporal, once',
  ]);
  assert.deepEqual(await failures(machine({ goToolchain: () => ({ version: 'go1.22.12', toolchain: 'local' }) })), [
    "✗ go1.22.12 is older than native/temporal's go 1.26.4, and GOTOOLCHAIN=local keeps it from fetching go1.26.4; " +
      'fix: go env -w GOTOOLCHAIN=auto (go then downloads go1.26.4 through the module proxy), or install Go 1.26.4',
  ]);
  assert.deepEqual(await failures(machine({ goToolchain: () => ({ version: 'go1.23.1', toolchain: 'path' }) })), [
    "✗ go1.23.1 is older than native/temporal's go 1.26.4, and GOTOOLCHAIN=path keeps it from fetching go1.26.4; " +
      'fix: go env -w GOTOOLCHAIN=auto (go then downloads go1.26.4 through the module proxy), or install Go 1.26.4',
  ]);
});

test('Temporal: a build without CA certificates cannot reach the module proxy', async () => {
  assert.deepEqual(await failures(machine({ hasCaCertificates: () => false })), [
    '✗ no CA certificates: Go cannot fetch modules over HTTPS; fix: apt-get install -y --no-install-recommends ca-certificates',
  ]);
});

test('a busy port names its config key and the variable that moves it', async () => {
  const probes = machine({ portFree: async (_host, port) => port !== 8080 });
  assert.deepEqual(await failures(probes), [
    '✗ 127.0.0.1:8080 (api.port) is in use, by another program or a NovaCron already running; ' +
      'fix: stop what listens there, or set NOVACRON_API_PORT to a free port',
  ]);
});

test('too little disk under the data dir fails with its fix', async () => {
  assert.deepEqual(await failures(machine({ freeDiskMib: async () => 300 })), [
    '✗ 300 MiB free under /data, less than 1024 MiB; fix: free space there',
  ]);
});

test('only the prerequisites asked for are checked', async () => {
  const broken = machine({ isRoot: false, findExecutable: () => undefined, portFree: async () => false });
  const results = await checkPrerequisites(broken, context, ['node', 'disk']);
  assert.deepEqual(
    results.map((r) => [r.prerequisite, r.ok]),
    [
      ['node', true],
      ['disk', true],
    ],
  );
});

test('stackPorts lists what npm start binds, each with a variable the config loader reads', () => {
  const embedded = stackPorts(loadConfig({ env: {} }));
  assert.deepEqual(
    embedded.map((p) => `${p.key}=${p.port}`),
    [
      'api.port=8080',
      'monitoring.workerMetricsPort=9464',
      'temporal.embedded.port=7233',
      'temporal.embedded.uiPort=8233',
      'storage.embedded.port=55432',
    ],
  );
  // Each variable really moves its port: the fix line must not name a variable that does nothing.
  const moved = stackPorts(
    loadConfig({ env: Object.fromEntries(embedded.map((p, i) => [p.env, String(20_000 + i)])) }),
  );
  assert.deepEqual(
    moved.map((p) => p.port),
    embedded.map((_, i) => 20_000 + i),
  );
  const external = stackPorts(
    loadConfig({ env: { TEMPORAL_ADDRESS: 'temporal:7233', DATABASE_URL: 'postgres://u:p@db/novacron' } }),
  );
  assert.deepEqual(
    external.map((p) => p.key),
    ['api.port', 'monitoring.workerMetricsPort'],
  );
});

/** The packages of the first `apt-get install` in a text: README's Set-up line, or .ci/run's continued one. */
function aptLine(text: string): string[] {
  const match = /apt-get install -y (?:-qq )?--no-install-recommends((?:\\\n|[^\n>])*)/.exec(text);
  assert.ok(match, 'an apt-get install line');
  return match[1]!.replace(/\\\n/g, ' ').split(/\s+/).filter(Boolean);
}

test("README's Set-up line installs what .ci/run installs before PostgreSQL, and every package a check names", () => {
  const root = path.join(__dirname, '..');
  const readme = readFileSync(path.join(root, 'README.md'), 'utf8');
  const setUp = aptLine(readme.slice(readme.indexOf('## Set-up')));
  const ci = aptLine(readFileSync(path.join(root, '.ci', 'run'), 'utf8'));
  assert.deepEqual(setUp, ci);
  // What every Debian system has (util-linux, apt, dpkg) is named by the checks but installed by nobody.
  const essential = new Set(['util-linux', 'apt', 'dpkg']);
  const named = [
    ...Object.values(HYPERVISOR_BINARIES),
    ...Object.values(NETWORK_BINARIES),
    ...Object.values(GUEST_BUILD_BINARIES),
    ...GUEST_BUILD_PACKAGES,
    'openssl',
    'ca-certificates',
  ].filter((pkg) => !essential.has(pkg));
  assert.deepEqual(
    named.filter((pkg) => !setUp.includes(pkg)),
    [],
  );
});
