/**
 * Counts workflow outcomes and durations. Workflow code cannot reach prom-client, so the numbers leave the sandbox
 * through a sink, which the SDK does not call during replay: every run is counted once.
 */
import {
  ContinueAsNew,
  isCancellation,
  proxySinks,
  workflowInfo,
  type Sinks,
  type WorkflowExecuteInput,
  type WorkflowInboundCallsInterceptor,
  type WorkflowInterceptorsFactory,
  type Next,
} from '@temporalio/workflow';

export type WorkflowOutcome = 'completed' | 'failed' | 'cancelled' | 'continued';

export interface WorkflowMetricsSinks extends Sinks {
  workflowMetrics: {
    finished(input: { outcome: WorkflowOutcome; durationMs: number }): void;
  };
}

const { workflowMetrics } = proxySinks<WorkflowMetricsSinks>();

class WorkflowMetricsInterceptor implements WorkflowInboundCallsInterceptor {
  async execute(input: WorkflowExecuteInput, next: Next<WorkflowInboundCallsInterceptor, 'execute'>): Promise<unknown> {
    const elapsed = () => Date.now() - workflowInfo().startTime.getTime();
    try {
      const result = await next(input);
      workflowMetrics.finished({ outcome: 'completed', durationMs: elapsed() });
      return result;
    } catch (err) {
      const outcome: WorkflowOutcome =
        err instanceof ContinueAsNew ? 'continued' : isCancellation(err) ? 'cancelled' : 'failed';
      workflowMetrics.finished({ outcome, durationMs: elapsed() });
      throw err;
    }
  }
}

export const interceptors: WorkflowInterceptorsFactory = () => ({ inbound: [new WorkflowMetricsInterceptor()] });
