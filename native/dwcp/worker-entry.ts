/**
 * Entry point of a DwcpWorkerPool thread: runs one task per message and posts the result back (and, for tasks that
 * report parts, each part as it is ready), moving large buffers instead of copying them.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { DwcpCancelledError } from './errors';
import { postWorkerMessage, reviveBuffers, type WorkerRequest, type WorkerResponse } from './worker-messages';
import { runWorkerTask } from './worker-tasks';

const port = parentPort;
if (port === null) throw new Error('worker-entry must run as a worker thread');
/** The id of a task the pool has given up (DwcpWorkerPool.cancel). */
const { cancel } = workerData as { cancel: Int32Array };

port.on('message', (request: WorkerRequest) => {
  let response: WorkerResponse;
  try {
    const result = runWorkerTask(reviveBuffers(request.task), (part) => {
      // Between parts the task holds nothing a throw would leak: its file is closed by its own finally.
      if (Atomics.load(cancel, 0) === request.id) throw new DwcpCancelledError('task cancelled');
      postWorkerMessage({ post: (m, t) => port.postMessage(m, t), message: { id: request.id, part } });
    });
    response = { id: request.id, ok: true, result };
  } catch (err) {
    const error = err instanceof Error ? err : new Error(String(err));
    const code = 'code' in error && typeof error.code === 'string' ? error.code : undefined;
    response = {
      id: request.id,
      ok: false,
      error: { name: error.name, message: error.message, ...(code ? { code } : {}) },
    };
  }
  postWorkerMessage({ post: (m, t) => port.postMessage(m, t), message: response });
});
