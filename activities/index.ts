/** Activity factories. Workers build the clients once and pass them in; workflows import these only as types. */
import { createClusterInitActivities, type ClusterInitDeps } from './cluster-init-activities';

export type ActivityDeps = ClusterInitDeps;

export function createControlActivities(deps: ActivityDeps) {
  return {
    ...createClusterInitActivities(deps),
  };
}

export type ControlActivities = ReturnType<typeof createControlActivities>;
