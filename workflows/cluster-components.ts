import type { ClusterComponent } from '../domain/component-graph';
import type { ClusterInitActivities } from '../activities/cluster-init-activities';

export type ComponentCheckName = Exclude<keyof ClusterInitActivities, 'recordClusterBoot'>;

/**
 * The components a cluster boot checks, each a real probe of the thing it names. Later features register theirs
 * here (libvirt hosts, DWCP, ML predictors); the graph is validated when the worker starts.
 */
export const CLUSTER_COMPONENTS: ReadonlyArray<ClusterComponent<ComponentCheckName>> = [
  {
    name: 'config',
    phase: 'pre-init',
    dependsOn: [],
    critical: true,
    check: 'checkConfig',
    retry: { maximumAttempts: 1 },
  },
  { name: 'data-dir', phase: 'pre-init', dependsOn: [], critical: true, check: 'checkDataDir' },
  { name: 'resources', phase: 'pre-init', dependsOn: ['data-dir'], critical: false, check: 'checkResources' },
  { name: 'postgres', phase: 'core', dependsOn: ['config'], critical: true, check: 'checkPostgres' },
  { name: 'temporal-namespace', phase: 'core', dependsOn: ['config'], critical: true, check: 'checkTemporalNamespace' },
  { name: 'audit-log', phase: 'services', dependsOn: ['postgres'], critical: true, check: 'checkAuditLog' },
  { name: 'onnx-runtime', phase: 'services', dependsOn: ['data-dir'], critical: false, check: 'checkOnnxRuntime' },
  {
    name: 'control-task-queue',
    phase: 'post-init',
    dependsOn: ['temporal-namespace', 'audit-log'],
    critical: true,
    check: 'checkControlTaskQueue',
  },
];
