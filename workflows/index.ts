/** Every workflow the control worker registers. Deterministic code only: see eslint.config.mjs. */
export { initializeCluster, bootReportQuery } from './initialize-cluster';
export { vmCreate } from './vm-create';
export { vmStart, vmStop, vmReboot, vmDelete } from './vm-operations';
export { vmProgressQuery } from './vm-progress';
export { fleetMonitor, fleetStatusQuery } from './host-fleet-monitor';
export { registerImage, replicateImage, imageProgressQuery } from './image-workflows';
export { migrateVm, migrationProgressQuery, cancelMigrationSignal } from './migrate-vm';
export { failoverHost, failoverProgressQuery } from './failover-host';
