/**
 * The set-up the workflow tests share: the control worker's workflow bundle, a client and a worker connection to
 * the test Temporal server, made once per file in `before` and closed in `after`.
 */
import type { Client, Connection } from '@temporalio/client';
import { DefaultLogger, NativeConnection, Runtime, type WorkflowBundleWithSourceMap } from '@temporalio/worker';
import { after, before } from 'node:test';
import { loadWorkflowBundle } from '../../workers/workflow-bundle';
import { temporalClient, testTemporalAddress } from './services';

export interface WorkflowTestEnv {
  bundle: WorkflowBundleWithSourceMap;
  client: Client;
  connection: Connection;
  nativeConnection: NativeConnection;
}

/** Registers the file's before/after hooks; the fields are set once `before` has run. */
export function workflowTestEnv(): WorkflowTestEnv {
  const env = {} as WorkflowTestEnv;
  before(async () => {
    Runtime.install({ logger: new DefaultLogger('WARN') });
    env.bundle = await loadWorkflowBundle();
    ({ client: env.client, connection: env.connection } = await temporalClient());
    env.nativeConnection = await NativeConnection.connect({ address: testTemporalAddress() });
  });
  after(async () => {
    await env.connection?.close();
    await env.nativeConnection?.close();
  });
  return env;
}
