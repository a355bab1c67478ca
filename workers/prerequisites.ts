/**
 * What this machine needs for `npm start`, `npm test` and `novacron doctor`, checked before anything starts: each
 * check that fails gives one line naming what is missing and the command that fixes it, instead of the dozens of
 * connection errors and failing test hooks a missing package would otherwise cause. The checks are pure over the
 * probes they are given (prerequisite-probes.ts reads the real machine), so every line a user can see is tested.
 */
import type { NovacronConfig } from '../config/schema';
import { GUEST_BUILD_BINARIES } from '../guest/build-tools';
import { HYPERVISOR_BINARIES, NETWORK_BINARIES } from '../native/libvirt/hypervisor-binaries';

export const PREREQUISITES = [
  'node',
  'temporal',
  'hypervisors',
  'network',
  'guest',
  'openssl',
  'ports',
  'disk',
] as const;
export type Prerequisite = (typeof PREREQUISITES)[number];

/** The oldest Go that fetches a newer toolchain by itself when a go.mod asks for one (GOTOOLCHAIN, Go 1.21). */
export const FIRST_SWITCHING_GO = '1.21';
const APT_INSTALL = 'apt-get install -y --no-install-recommends';

export interface GoToolchain {
  /** `go env GOVERSION` outside any module, e.g. "go1.22.12". */
  version: string;
  /** `go env GOTOOLCHAIN`: "auto", "local", "go1.26.4+auto"...; empty before Go 1.21. */
  toolchain: string;
}

export interface PrerequisiteProbes {
  /** process.versions.node */
  nodeVersion: string;
  isRoot: boolean;
  findExecutable(name: string): string | undefined;
  goToolchain(): GoToolchain | undefined;
  /** Where the embedded Temporal server is or will be built, and whether it is there already. */
  temporalBinary(): { path: string; built: boolean };
  /** Go verifies the module proxy's TLS certificate against the system's CA bundle. */
  hasCaCertificates(): boolean;
  portFree(host: string, port: number): Promise<boolean>;
  freeDiskMib(dir: string): Promise<number>;
}

export interface PortRequirement {
  /** The config key, as a user would look it up. */
  key: string;
  /** The environment variable that moves it. */
  env: string;
  host: string;
  port: number;
}

export interface PrerequisiteContext {
  /** package.json's engines.node. */
  nodeRange: string;
  /** The `go` line of native/temporal/go.mod. */
  goModVersion: string;
  /** Set when an external Temporal cluster serves instead of the embedded server. */
  temporalAddress?: string;
  ports: PortRequirement[];
  disk: { dir: string; minFreeMib: number; fix: string };
}

export interface CheckResult {
  prerequisite: Prerequisite;
  ok: boolean;
  summary: string;
  /** Set when ok is false: the command or step that fixes it. */
  fix?: string;
}

const pass = (prerequisite: Prerequisite, summary: string): CheckResult => ({ prerequisite, ok: true, summary });
const fail = (prerequisite: Prerequisite, summary: string, fix: string): CheckResult => ({
  prerequisite,
  ok: false,
  summary,
  fix,
});

/** The one line a user sees for a result. */
export function formatCheck(result: CheckResult): string {
  return result.ok ? `✓ ${result.summary}` : `✗ ${result.summary}; fix: ${result.fix}`;
}

type Version = [number, number, number];

function parseVersion(text: string): Version | undefined {
  const match = /^v?(?:go)?(\d+)(?:\.(\d+))?(?:\.(\d+))?/.exec(text.trim());
  return match ? [Number(match[1]), Number(match[2] ?? 0), Number(match[3] ?? 0)] : undefined;
}

function compareVersions(a: Version, b: Version): number {
  return a[0] - b[0] || a[1] - b[1] || a[2] - b[2];
}

/**
 * Whether a version satisfies an engines range made of `^X.Y.Z` and `>=X[.Y[.Z]]` alternatives joined by `||`, the only
 * forms package.json uses. Hand-written rather than a semver dependency for two operators; anything else throws,
 * so an edit to engines that this cannot read fails the unit test instead of passing every Node.
 */
export function satisfiesRange(version: string, range: string): boolean {
  const actual = parseVersion(version);
  if (!actual) throw new Error(`cannot read version ${JSON.stringify(version)}`);
  return range.split('||').some((alternative) => {
    const match = /^\s*(\^|>=)\s*(\d+(?:\.\d+){0,2})\s*$/.exec(alternative);
    const bound = match ? parseVersion(match[2]!) : undefined;
    if (!match || !bound) throw new Error(`cannot read engines range ${JSON.stringify(range)}`);
    if (compareVersions(actual, bound) < 0) return false;
    return match[1] === '>=' || actual[0] === bound[0];
  });
}

function checkNode(probes: PrerequisiteProbes, context: PrerequisiteContext): CheckResult {
  const { nodeVersion } = probes;
  if (satisfiesRange(nodeVersion, context.nodeRange)) return pass('node', `Node.js ${nodeVersion}`);
  return fail(
    'node',
    `Node.js ${nodeVersion} does not satisfy ${context.nodeRange} (package.json engines)`,
    'install Node.js 20.19 or later (https://nodejs.org/en/download; Debian 12 ships 18)',
  );
}

// GOTOOLCHAIN=auto (the default of Go's own downloads) or <name>+auto lets go switch; local and path do not.
function canFetchToolchain(toolchain: string): boolean {
  return toolchain === 'auto' || toolchain.endsWith('+auto');
}

function checkTemporal(probes: PrerequisiteProbes, context: PrerequisiteContext): CheckResult[] {
  if (context.temporalAddress)
    return [pass('temporal', `Temporal at ${context.temporalAddress} (TEMPORAL_ADDRESS); nothing to build`)];
  const binary = probes.temporalBinary();
  if (binary.built) return [pass('temporal', `embedded Temporal server built: ${binary.path}`)];

  const required = context.goModVersion;
  const installGo =
    `install Go ${FIRST_SWITCHING_GO} or later (https://go.dev/dl/; Debian 12's golang-go 1.19 is too old), ` +
    'or set TEMPORAL_ADDRESS=host:7233 to use a Temporal cluster';
  const go = probes.goToolchain();
  const goVersion = go && parseVersion(go.version);
  const results: CheckResult[] = [];
  if (!go || !goVersion) {
    results.push(fail('temporal', 'Go not found: it builds the embedded Temporal server, once', installGo));
  } else if (compareVersions(goVersion, parseVersion(required)!) >= 0) {
    results.push(pass('temporal', `${go.version} builds the embedded Temporal server, once`));
  } else if (compareVersions(goVersion, parseVersion(FIRST_SWITCHING_GO)!) < 0) {
    results.push(
      fail(
        'temporal',
        `${go.version} cannot build native/temporal (go ${required}) nor fetch a newer Go (that needs Go ${FIRST_SWITCHING_GO})`,
        installGo,
      ),
    );
  } else if (!canFetchToolchain(go.toolchain)) {
    results.push(
      fail(
        'temporal',
        `${go.version} is older than native/temporal's go ${required}, and GOTOOLCHAIN=${go.toolchain} keeps it from fetching go${required}`,
        `go env -w GOTOOLCHAIN=auto (go then downloads go${required} through the module proxy), or install Go ${required}`,
      ),
    );
  } else {
    results.push(
      pass('temporal', `${go.version} fetches go${required} through the module proxy, then builds Temporal, once`),
    );
  }
  if (!probes.hasCaCertificates()) {
    results.push(
      fail('temporal', 'no CA certificates: Go cannot fetch modules over HTTPS', `${APT_INSTALL} ca-certificates`),
    );
  }
  return results;
}

/** One check over a table of programs and the Debian packages that bring them: one line names every package once. */
function checkPrograms(
  probes: PrerequisiteProbes,
  input: { prerequisite: Prerequisite; programs: Readonly<Record<string, string>>; purpose: string },
): CheckResult {
  const programs = Object.keys(input.programs);
  const missing = programs.filter((program) => probes.findExecutable(program) === undefined);
  if (missing.length === 0) return pass(input.prerequisite, `${input.purpose}: ${programs.join(', ')}`);
  const packages = [...new Set(missing.map((program) => input.programs[program]))];
  return fail(
    input.prerequisite,
    `${missing.join(', ')} not found (${input.purpose})`,
    `${APT_INSTALL} ${packages.join(' ')}`,
  );
}

function checkHypervisors(probes: PrerequisiteProbes): CheckResult[] {
  const results = [
    checkPrograms(probes, { prerequisite: 'hypervisors', programs: HYPERVISOR_BINARIES, purpose: 'local hypervisors' }),
  ];
  results.push(
    probes.isRoot
      ? pass('hypervisors', 'running as root (local hypervisors run libvirtd in mount and PID namespaces)')
      : fail(
          'hypervisors',
          'not root: local hypervisors run libvirtd in mount and PID namespaces',
          'run as root (sudo -E npm start, sudo -E npm test)',
        ),
  );
  return results;
}

function checkOpenssl(probes: PrerequisiteProbes): CheckResult {
  return probes.findExecutable('openssl')
    ? pass('openssl', 'openssl (certificates for DWCP, the API and Temporal)')
    : fail('openssl', 'openssl not found (certificates for DWCP, the API and Temporal)', `${APT_INSTALL} openssl`);
}

async function checkPorts(probes: PrerequisiteProbes, context: PrerequisiteContext): Promise<CheckResult[]> {
  const wanted = context.ports.filter((p) => p.port !== 0);
  const free = await Promise.all(wanted.map((p) => probes.portFree(p.host, p.port)));
  const busy = wanted.filter((_, i) => !free[i]);
  if (busy.length === 0)
    return [pass('ports', `ports free: ${wanted.map((p) => `${p.port} (${p.key})`).join(', ') || 'none needed'}`)];
  return busy.map((p) =>
    fail(
      'ports',
      `${p.host}:${p.port} (${p.key}) is in use, by another program or a NovaCron already running`,
      `stop what listens there, or set ${p.env} to a free port`,
    ),
  );
}

async function checkDisk(probes: PrerequisiteProbes, context: PrerequisiteContext): Promise<CheckResult> {
  const { dir, minFreeMib, fix } = context.disk;
  const freeMib = await probes.freeDiskMib(dir);
  return freeMib >= minFreeMib
    ? pass('disk', `${freeMib} MiB free under ${dir}`)
    : fail('disk', `${freeMib} MiB free under ${dir}, less than ${minFreeMib} MiB`, fix);
}

/** Runs the checks for the prerequisites asked for, in PREREQUISITES order. */
export async function checkPrerequisites(
  probes: PrerequisiteProbes,
  context: PrerequisiteContext,
  wanted: Iterable<Prerequisite> = PREREQUISITES,
): Promise<CheckResult[]> {
  const selected = new Set(wanted);
  const results: CheckResult[] = [];
  for (const prerequisite of PREREQUISITES) {
    if (!selected.has(prerequisite)) continue;
    switch (prerequisite) {
      case 'node':
        results.push(checkNode(probes, context));
        break;
      case 'temporal':
        results.push(...checkTemporal(probes, context));
        break;
      case 'hypervisors':
        results.push(...checkHypervisors(probes));
        break;
      case 'network':
        // Harness hosts with a network namespace and a capped link each (the migration tests); npm start's do not.
        results.push(
          checkPrograms(probes, {
            prerequisite: 'network',
            programs: NETWORK_BINARIES,
            purpose: "the harness's host networks",
          }),
        );
        break;
      case 'guest':
        // The guest the migration tests boot is built here (npm run build:guest); npm start does not need it.
        results.push(
          checkPrograms(probes, {
            prerequisite: 'guest',
            programs: GUEST_BUILD_BINARIES,
            purpose: "the test guest's build",
          }),
        );
        break;
      case 'openssl':
        results.push(checkOpenssl(probes));
        break;
      case 'ports':
        results.push(...(await checkPorts(probes, context)));
        break;
      case 'disk':
        results.push(await checkDisk(probes, context));
        break;
    }
  }
  return results;
}

/** The ports `npm start` binds, from the config, each with the variable that moves it. */
export function stackPorts(config: NovacronConfig): PortRequirement[] {
  const local = '127.0.0.1';
  const ports: PortRequirement[] = [
    { key: 'api.port', env: 'NOVACRON_API_PORT', host: config.api.host, port: config.api.port },
    {
      key: 'monitoring.workerMetricsPort',
      env: 'NOVACRON_MONITORING_WORKER_METRICS_PORT',
      host: config.api.host,
      port: config.monitoring.workerMetricsPort,
    },
  ];
  if (!config.temporal.address) {
    const { embedded } = config.temporal;
    ports.push(
      { key: 'temporal.embedded.port', env: 'NOVACRON_TEMPORAL_EMBEDDED_PORT', host: local, port: embedded.port },
      {
        key: 'temporal.embedded.uiPort',
        env: 'NOVACRON_TEMPORAL_EMBEDDED_UI_PORT',
        host: local,
        port: embedded.uiPort,
      },
    );
  }
  if (!config.storage.databaseUrl) {
    ports.push({
      key: 'storage.embedded.port',
      env: 'NOVACRON_STORAGE_EMBEDDED_PORT',
      host: local,
      port: config.storage.embedded.port,
    });
  }
  return ports;
}
