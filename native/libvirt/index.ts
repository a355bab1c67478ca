/**
 * The libvirt driver: what a host agent's activities use to manage domains on its hypervisor.
 *
 * - `LibvirtConnection` mirrors libvirt's API names (domainDefineXML, domainCreate, listAllDomains, …), one typed
 *   input object per call, over `virsh -c <uri>` behind an injectable `CommandRunner`.
 * - Errors are typed (`LibvirtNotFoundError`, `LibvirtInvalidStateError`, …) with predicates such as
 *   `isNotFound(err)`, and `tolerate()` makes a step idempotent.
 * - `buildDomainXml` validates and escapes a `DomainSpec`; `DiskImages` manages qemu-img images.
 * - `startLocalHypervisors` runs several isolated libvirtd instances on one machine for tests and `npm start`.
 *
 * docs/libvirt-driver.md explains the choices and their measurements.
 */
export * from './command-runner';
export * from './disk-images';
export * from './domain-xml';
export * from './errors';
export * from './harness';
export * from './libvirt-connection';
export * from './xml';
