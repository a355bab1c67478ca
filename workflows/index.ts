/** Every workflow the control worker registers. Deterministic code only: see eslint.config.mjs. */
export { initializeCluster, bootReportQuery } from './initialize-cluster';
