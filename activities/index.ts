/** Activity factories. Workers build the clients once and pass them in; workflows import these only as types. */
import { createClusterInitActivities, type ClusterInitDeps } from './cluster-init-activities';
import { createFailoverControlActivities, type FailoverMetricsRecorder } from './failover-control-activities';
import { createImageControlActivities } from './image-control-activities';
import { createInventoryActivities } from './inventory-activities';
import { createMigrationControlActivities, type MigrationMetricsRecorder } from './migration-control-activities';

export type ActivityDeps = ClusterInitDeps & {
  migrationMetrics?: MigrationMetricsRecorder;
  failoverMetrics?: FailoverMetricsRecorder;
};

export function createControlActivities(deps: ActivityDeps) {
  return {
    ...createClusterInitActivities(deps),
    ...createInventoryActivities(deps),
    ...createImageControlActivities(deps),
    ...createMigrationControlActivities(deps),
    ...createFailoverControlActivities(deps),
  };
}

export type ControlActivities = ReturnType<typeof createControlActivities>;
