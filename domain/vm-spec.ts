/**
 * The VM spec, shared by the API (request validation and OpenAPI), the create workflow and the agents. Pure zod:
 * safe inside the workflow sandbox.
 */
import { z } from 'zod';

/** libvirt's domain name rules, kept in step with native/libvirt's DOMAIN_NAME_PATTERN (workflows may not import it). */
export const VM_NAME_PATTERN = /^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$/;
const DISK_NAME_PATTERN = /^[a-z0-9][a-z0-9-]{0,31}$/;
const HOST_ID_PATTERN = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
/** Image ids and storage pool names follow the config's SAFE_ID_PATTERN. */
const SAFE_ID_PATTERN = HOST_ID_PATTERN;
/** The pool every host has: its own image root. Other pools are declared per host in `agent.storagePools`. */
export const LOCAL_STORAGE_POOL = 'local';

export const vmDiskSchema = z.strictObject({
  name: z.string().regex(DISK_NAME_PATTERN, 'must be lowercase letters, digits and dashes (at most 32)'),
  sizeMib: z
    .number()
    .int()
    .min(1)
    .max(4 * 1024 * 1024),
  format: z.enum(['qcow2', 'raw']).default('qcow2'),
});

export const vmSpecSchema = z.strictObject({
  name: z.string().regex(VM_NAME_PATTERN, 'must be letters, digits and _ . - (at most 63), starting alphanumeric'),
  vcpus: z.number().int().min(1).max(64),
  memoryMib: z
    .number()
    .int()
    .min(16)
    .max(1024 * 1024),
  disks: z
    .array(vmDiskSchema)
    .max(8)
    .default([])
    .refine((disks) => new Set(disks.map((d) => d.name)).size === disks.length, 'disk names must be unique'),
  /** The first disk becomes a qcow2 overlay on this library image (its `sizeMib` is at least the image's size). */
  image: z.string().regex(SAFE_ID_PATTERN, 'must be an image id (lowercase letters, digits and dashes)').optional(),
  /**
   * Where the VM's disks live: `local` (the host's own image root) or a pool that several hosts see, such as NFS.
   * Only VMs on a shared pool can migrate live today, and only those restart elsewhere when their host fails.
   */
  storagePool: z
    .string()
    .regex(SAFE_ID_PATTERN, 'must be a storage pool name (lowercase letters, digits and dashes)')
    .default(LOCAL_STORAGE_POOL),
  /**
   * SMBIOS OEM strings (type 11) the guest reads from its firmware: settings with no agent and no network, as
   * cloud-init's SMBIOS data source or the test guest's workload (`novacron.dirty-mibps=…`) use them.
   */
  oemStrings: z
    .array(z.string().regex(/^[\x20-\x7e]{1,255}$/, 'must be 1 to 255 printable ASCII characters'))
    .max(16)
    .optional(),
  /** `user` is SLIRP networking, which needs no host bridge; `none` gives the guest no interface. */
  network: z.enum(['none', 'user']).default('none'),
  /** Whether failover restarts the VM elsewhere when its host fails; `false` leaves it down with its host. */
  ha: z.boolean().default(true),
  /** Higher restarts first when a host fails. */
  haPriority: z.number().int().min(0).max(100).default(50),
  /** Pins the VM to a host; placement picks one otherwise. */
  hostId: z.string().regex(HOST_ID_PATTERN, 'must be a host id').optional(),
  /** Placement filters on host labels. */
  placement: z
    .strictObject({
      region: z.string().regex(HOST_ID_PATTERN).optional(),
      zone: z.string().regex(HOST_ID_PATTERN).optional(),
    })
    .optional(),
});

export type VmSpecInput = z.input<typeof vmSpecSchema>;
export type VmSpec = z.output<typeof vmSpecSchema>;

export const VM_STATES = [
  'creating',
  'starting',
  'running',
  'stopping',
  'stopped',
  'rebooting',
  'deleting',
  'migrating',
  'failed',
] as const;
export type VmState = (typeof VM_STATES)[number];

/** States a lifecycle workflow passes through; drift is not judged while a VM is in one. */
export const TRANSITIONAL_VM_STATES: readonly VmState[] = [
  'creating',
  'starting',
  'stopping',
  'rebooting',
  'deleting',
  'migrating',
];

/** Guest device names in disk order: vda, vdb, … */
export function diskTarget(index: number): string {
  return `vd${String.fromCharCode('a'.charCodeAt(0) + index)}`;
}

/** A VM as the store records it. */
export interface VmRecord {
  id: string;
  name: string;
  hostId?: string;
  spec: VmSpec;
  state: VmState;
  ownerToken?: number;
  /** Grows by one with every ownership write; a migration commits only over the generation it locked. */
  ownerGeneration?: number;
  operationWorkflowId?: string;
  lastError?: string;
  createdAt: string;
  updatedAt: string;
}
