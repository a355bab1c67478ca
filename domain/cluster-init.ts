/** The input of a cluster boot, built from the effective config by every caller that starts one. */
import type { NovacronConfig } from '../config/schema';
import type { ComponentRetryPolicy } from './component-graph';

export interface InitializeClusterInput {
  nodeId: string;
  /** Boot-wide retry policy; a component may override parts of it. */
  retry: ComponentRetryPolicy;
  componentTimeoutMs: number;
  disabledComponents?: string[];
  /** `sequential` checks one component at a time: for debugging a boot and for the boot benchmark's baseline. */
  execution?: 'level-parallel' | 'sequential';
}

export function clusterInitInput(config: NovacronConfig, disabledComponents: string[] = []): InitializeClusterInput {
  return {
    nodeId: config.system.nodeId,
    retry: config.clusterInit.retry,
    componentTimeoutMs: config.clusterInit.componentTimeoutMs,
    disabledComponents: [...new Set([...config.clusterInit.disabledComponents, ...disabledComponents])],
  };
}
