/** Images and their copies on hosts, as the store records them and the workflows and API see them. */
export const IMAGE_FORMATS = ['raw', 'qcow2'] as const;
export type ImageFormat = (typeof IMAGE_FORMATS)[number];
export const REPLICA_STATES = ['replicating', 'ready', 'failed'] as const;
export type ReplicaState = (typeof REPLICA_STATES)[number];

export interface ImageReplica {
  hostId: string;
  path: string;
  state: ReplicaState;
  workflowId?: string;
  error?: string;
  updatedAt: string;
}

export interface ImageRecord {
  id: string;
  format: ImageFormat;
  sizeBytes: number;
  sha256: string;
  description: string;
  createdAt: string;
  replicas: ImageReplica[];
}

/** Where an image lives under a host's image root; the same relative place on every host. */
export function imageFileName(input: { imageId: string; format: ImageFormat }): string {
  return `library/${input.imageId}.${input.format}`;
}
