/**
 * The libvirt driver: what a host agent's activities use to manage domains on its hypervisor.
 *
 * - `LibvirtConnection` mirrors libvirt's API names (domainDefineXML, domainCreate, listAllDomains, …), one typed
 *   input object per call, over `virsh -c <uri>` behind an injectable `CommandRunner`.
 * - Errors are typed (`LibvirtNotFoundError`, `LibvirtInvalidStateError`, …) with predicates such as
 *   `isNotFound(err)`, and `tolerate()` makes a step idempotent.
 * - Live migration: `domainMigrateToURI3` and the calls that steer a running job (max downtime, speed, post-copy,
 *   abort, dirty rate) are LibvirtConnection methods; `migrationJobSample` turns job statistics into the shared
 *   MigrationJobSample. `resolveDomainType` picks KVM or TCG for config `agent.domainType`.
 * - `buildDomainXml` validates and escapes a `DomainSpec`; `DiskImages` manages qemu-img images.
 * - The test harness (several isolated libvirtd instances on one machine) is `./harness`, imported by path so
 *   production code never pulls it in.
 *
 * docs/libvirt-driver.md explains the choices and their measurements.
 */
export * from './command-runner';
export * from './disk-images';
export * from './domain-xml';
export type { DomainMigrateInput } from './domain-migration';
export {
  DomainTypeUnavailableError,
  hostDomainTypeProbe,
  kvmSupport,
  resolveDomainType,
  type DomainTypeProbe,
  type DomainTypeSetting,
  type KvmSupport,
} from './domain-type';
export * from './errors';
export * from './domain-event-stream';
export * from './libvirt-connection';
export * from './libvirt-types';
export { migrationJobSample } from './migration-job-sample';
export { parseEventLine } from './virsh-parsers';
export * from './xml';
