import { posix } from 'node:path';

import { DomainType, detectDomainType } from './domain-type';
import { childElement, childElements, element, parseXml, serializeXml, textContent } from './xml';
import type { XmlElement } from './xml';

// Where they were first defined; importers of the XML builder keep finding them here.
export { DomainType, detectDomainType };

export const DiskFormat = { qcow2: 'qcow2', raw: 'raw' } as const;
export type DiskFormat = (typeof DiskFormat)[keyof typeof DiskFormat];

/** Namespace of the `<metadata>` child that ties a libvirt domain back to NovaCron's inventory. */
export const NOVACRON_METADATA_NS = 'https://novacron.dev/xmlns/libvirt/domain/1';
const METADATA_PREFIX = 'novacron';

export const DOMAIN_NAME_PATTERN = /^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$/;
const UUID_PATTERN = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const DISK_TARGET_PATTERN = /^vd[a-z]{1,2}$/;
const MAC_PATTERN = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;
// Restricting paths to this set keeps them inert in XML, in argv and in a shell someone pastes them into.
const SAFE_PATH_PATTERN = /^\/[A-Za-z0-9_./-]*$/;
const LABEL_KEY_PATTERN = /^[a-z][a-z0-9_.-]{0,62}$/;
const MAX_VCPUS = 256;
const MIN_MEMORY_MIB = 16;
const MAX_MEMORY_MIB = 4 * 1024 * 1024;
const MAX_METADATA_VALUE_LENGTH = 1024;
const MAX_OEM_STRINGS = 64;

export interface DiskSpec {
  path: string;
  format: DiskFormat;
  /** Guest device name on the virtio bus: vda, vdb, … */
  target: string;
  readOnly?: boolean;
}

/** User-mode (SLIRP) networking needs no host bridge, so it works on any hypervisor, including test ones. */
export interface UserNetworkSpec {
  type: 'user';
  mac?: string;
}

export type NetworkSpec = UserNetworkSpec;

export interface NovaCronMetadata {
  vmId: string;
  owner?: string;
  labels?: Readonly<Record<string, string>>;
}

export interface DomainSpec {
  name: string;
  uuid: string;
  vcpus: number;
  memoryMiB: number;
  disks: readonly DiskSpec[];
  /** An empty list gives a guest with no network interface. */
  networks: readonly NetworkSpec[];
  metadata: NovaCronMetadata;
  /** Every disk path must lie strictly inside this directory. */
  imageRoot: string;
  /** Defaults to `detectDomainType()`. */
  domainType?: DomainType;
  /**
   * A file on the host that keeps everything the guest writes to its serial console (virtlogd writes it, replaced
   * at each start). Two hosts running the same domain need different paths: a second writer truncates the file.
   */
  consoleLogPath?: string;
  /** SMBIOS OEM strings (type 11), which the guest reads from its firmware tables: per-VM settings with no agent. */
  oemStrings?: readonly string[];
}

export class DomainSpecError extends Error {
  override readonly name = 'DomainSpecError';
}

export function assertDomainName(name: string): void {
  if (typeof name !== 'string' || !DOMAIN_NAME_PATTERN.test(name)) {
    throw new DomainSpecError(`domain name ${JSON.stringify(name)} must match ${DOMAIN_NAME_PATTERN.source}`);
  }
}

/**
 * Accepts an absolute, already-normalized path made of safe characters that lies strictly inside `root`.
 * Normalization is checked rather than applied: a caller sending `a/../b` has a bug worth surfacing.
 */
export function assertPathUnderRoot(input: { path: string; root: string }): void {
  const { path, root } = input;
  assertSafeAbsolutePath(root, 'image root');
  assertSafeAbsolutePath(path, 'path');
  if (path.endsWith('/')) throw new DomainSpecError(`path ${JSON.stringify(path)} names a directory`);
  const prefix = root.endsWith('/') ? root : `${root}/`;
  if (!path.startsWith(prefix) || path.length === prefix.length) {
    throw new DomainSpecError(`path ${JSON.stringify(path)} is not inside ${JSON.stringify(root)}`);
  }
}

function assertSafeAbsolutePath(path: string, what: string): void {
  if (typeof path !== 'string' || !SAFE_PATH_PATTERN.test(path)) {
    throw new DomainSpecError(`${what} ${JSON.stringify(path)} must be absolute and use only [A-Za-z0-9_./-]`);
  }
  if (path.split('/').some((segment) => segment === '..' || segment === '.')) {
    throw new DomainSpecError(`${what} ${JSON.stringify(path)} must not contain "." or ".." segments`);
  }
  const normalized = posix.normalize(path);
  if (normalized !== path && `${normalized}/` !== path) {
    throw new DomainSpecError(`${what} ${JSON.stringify(path)} is not normalized`);
  }
}

function assertMetadataValue(value: string, what: string): void {
  if (typeof value !== 'string' || value.length === 0 || value.length > MAX_METADATA_VALUE_LENGTH) {
    throw new DomainSpecError(`${what} must be a non-empty string of at most ${MAX_METADATA_VALUE_LENGTH} characters`);
  }
  // Control characters would make libvirt reject the document; refuse them here with a clearer message.
  if ([...value].some((ch) => ch.charCodeAt(0) < 0x20 || ch.charCodeAt(0) === 0x7f)) {
    throw new DomainSpecError(`${what} must not contain control characters`);
  }
}

function assertIntegerIn(value: number, min: number, max: number, what: string): void {
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new DomainSpecError(`${what} must be an integer in [${min}, ${max}], got ${String(value)}`);
  }
}

export function validateDomainSpec(spec: DomainSpec): void {
  assertDomainName(spec.name);
  if (typeof spec.uuid !== 'string' || !UUID_PATTERN.test(spec.uuid)) {
    throw new DomainSpecError(`uuid ${JSON.stringify(spec.uuid)} must be a lowercase RFC 4122 UUID`);
  }
  assertIntegerIn(spec.vcpus, 1, MAX_VCPUS, 'vcpus');
  assertIntegerIn(spec.memoryMiB, MIN_MEMORY_MIB, MAX_MEMORY_MIB, 'memoryMiB');
  if (spec.domainType !== undefined && !Object.values(DomainType).includes(spec.domainType)) {
    throw new DomainSpecError(`domainType must be one of ${Object.values(DomainType).join(', ')}`);
  }
  const targets = new Set<string>();
  const paths = new Set<string>();
  for (const disk of spec.disks) {
    assertPathUnderRoot({ path: disk.path, root: spec.imageRoot });
    if (!Object.values(DiskFormat).includes(disk.format)) {
      throw new DomainSpecError(`disk format must be one of ${Object.values(DiskFormat).join(', ')}`);
    }
    if (!DISK_TARGET_PATTERN.test(disk.target)) {
      throw new DomainSpecError(`disk target ${JSON.stringify(disk.target)} must match ${DISK_TARGET_PATTERN.source}`);
    }
    if (targets.has(disk.target)) throw new DomainSpecError(`disk target ${disk.target} is used twice`);
    if (paths.has(disk.path)) throw new DomainSpecError(`disk path ${disk.path} is used twice`);
    targets.add(disk.target);
    paths.add(disk.path);
  }
  for (const net of spec.networks) {
    if (net.type !== 'user') throw new DomainSpecError(`network type ${JSON.stringify(net.type)} is not supported`);
    if (net.mac !== undefined && !MAC_PATTERN.test(net.mac)) {
      throw new DomainSpecError(`mac ${JSON.stringify(net.mac)} must be six lowercase hex octets`);
    }
  }
  if (spec.consoleLogPath !== undefined) {
    assertSafeAbsolutePath(spec.consoleLogPath, 'consoleLogPath');
    if (spec.consoleLogPath.endsWith('/')) throw new DomainSpecError('consoleLogPath names a directory');
  }
  const oemStrings = spec.oemStrings ?? [];
  if (oemStrings.length > MAX_OEM_STRINGS) throw new DomainSpecError(`at most ${MAX_OEM_STRINGS} oemStrings`);
  oemStrings.forEach((entry, i) => assertMetadataValue(entry, `oemStrings[${i}]`));
  assertMetadataValue(spec.metadata.vmId, 'metadata.vmId');
  if (spec.metadata.owner !== undefined) assertMetadataValue(spec.metadata.owner, 'metadata.owner');
  for (const [key, value] of Object.entries(spec.metadata.labels ?? {})) {
    if (!LABEL_KEY_PATTERN.test(key)) {
      throw new DomainSpecError(`label key ${JSON.stringify(key)} must match ${LABEL_KEY_PATTERN.source}`);
    }
    assertMetadataValue(value, `label ${key}`);
  }
}

/** Builds libvirt domain XML from a validated spec; throws `DomainSpecError` on any unsafe or invalid field. */
export function buildDomainXml(spec: DomainSpec): string {
  validateDomainSpec(spec);
  const type = spec.domainType ?? detectDomainType();
  const oemStrings = spec.oemStrings ?? [];
  const meta = (local: string, children: string[] = [], attrs: Record<string, string> = {}): XmlElement =>
    element(`${METADATA_PREFIX}:${local}`, attrs, children);
  const labels = Object.entries(spec.metadata.labels ?? {})
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([key, value]) => meta('label', [], { key, value }));

  const domain = element('domain', { type }, [
    element('name', {}, [spec.name]),
    element('uuid', {}, [spec.uuid]),
    element('metadata', {}, [
      element(`${METADATA_PREFIX}:instance`, { [`xmlns:${METADATA_PREFIX}`]: NOVACRON_METADATA_NS }, [
        meta('vm-id', [spec.metadata.vmId]),
        spec.metadata.owner === undefined ? undefined : meta('owner', [spec.metadata.owner]),
        ...labels,
      ]),
    ]),
    element('memory', { unit: 'MiB' }, [String(spec.memoryMiB)]),
    element('vcpu', {}, [String(spec.vcpus)]),
    oemStrings.length === 0
      ? undefined
      : element('sysinfo', { type: 'smbios' }, [
          element(
            'oemStrings',
            {},
            oemStrings.map((entry) => element('entry', {}, [entry])),
          ),
        ]),
    element('os', {}, [
      element('type', { arch: 'x86_64', machine: 'pc' }, ['hvm']),
      element('boot', { dev: 'hd' }),
      // Without it the <sysinfo> block is only described, not given to the guest's firmware.
      oemStrings.length === 0 ? undefined : element('smbios', { mode: 'sysinfo' }),
    ]),
    // ACPI is what lets a graceful shutdown or reboot reach the guest OS.
    element('features', {}, [element('acpi')]),
    element('clock', { offset: 'utc' }),
    element('on_poweroff', {}, ['destroy']),
    element('on_reboot', {}, ['restart']),
    element('on_crash', {}, ['destroy']),
    element('devices', {}, [
      ...spec.disks.map((disk) =>
        element('disk', { type: 'file', device: 'disk' }, [
          element('driver', { name: 'qemu', type: disk.format }),
          element('source', { file: disk.path }),
          element('target', { dev: disk.target, bus: 'virtio' }),
          disk.readOnly ? element('readonly') : undefined,
        ]),
      ),
      ...spec.networks.map((net) =>
        element('interface', { type: net.type }, [
          net.mac === undefined ? undefined : element('mac', { address: net.mac }),
          element('model', { type: 'virtio' }),
        ]),
      ),
      element('serial', { type: 'pty' }, [
        spec.consoleLogPath === undefined ? undefined : element('log', { file: spec.consoleLogPath, append: 'off' }),
      ]),
      element('console', { type: 'pty' }),
    ]),
  ]);
  return serializeXml(domain);
}

/** Reads NovaCron's metadata back from a domain's XML; undefined when the domain was not made by NovaCron. */
export function parseNovaCronMetadata(domainXml: string): NovaCronMetadata | undefined {
  const root = parseXml(domainXml);
  const metadata = childElement(root, 'metadata');
  if (!metadata) return undefined;
  for (const candidate of metadata.children) {
    if (typeof candidate === 'string') continue;
    const prefix = candidate.name.includes(':') ? candidate.name.slice(0, candidate.name.indexOf(':')) : '';
    const nsAttr = prefix === '' ? 'xmlns' : `xmlns:${prefix}`;
    const local = candidate.name.slice(prefix === '' ? 0 : prefix.length + 1);
    if (local !== 'instance' || candidate.attributes[nsAttr] !== NOVACRON_METADATA_NS) continue;
    const qualified = (name: string): string => (prefix === '' ? name : `${prefix}:${name}`);
    const vmId = childElement(candidate, qualified('vm-id'));
    if (!vmId) return undefined;
    const owner = childElement(candidate, qualified('owner'));
    const labels: Record<string, string> = {};
    for (const label of childElements(candidate, qualified('label'))) {
      const key = label.attributes['key'];
      const value = label.attributes['value'];
      if (key !== undefined && value !== undefined) labels[key] = value;
    }
    return {
      vmId: textContent(vmId),
      ...(owner ? { owner: textContent(owner) } : {}),
      ...(Object.keys(labels).length > 0 ? { labels } : {}),
    };
  }
  return undefined;
}
