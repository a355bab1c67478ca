import { Metadata, status, type ServiceError as GrpcServiceError } from '@grpc/grpc-js';
import { Connection, ServiceError } from '@temporalio/client';
import assert from 'node:assert/strict';
import net from 'node:net';
import { describe, test } from 'node:test';
import { connectWithRetry, grpcStatusOf, isTemporalUnavailable } from './temporal-clients';

/** An error as grpc-js rejects a call with: code, details and metadata. */
function grpcError(code: status, details: string): GrpcServiceError {
  return Object.assign(new Error(`${code} ${status[code]}: ${details}`), { code, details, metadata: new Metadata() });
}

describe('grpcStatusOf', () => {
  test('reads the status through the ServiceError the client wraps it in', () => {
    const wrapped = new ServiceError('Failed to start Workflow', { cause: grpcError(status.UNAVAILABLE, 'down') });
    assert.equal(grpcStatusOf(wrapped), status.UNAVAILABLE);
    assert.ok(isTemporalUnavailable(wrapped));
  });

  test('is undefined when no server answered, and other statuses are not unavailability', () => {
    assert.equal(grpcStatusOf(new Error('connect ECONNREFUSED 127.0.0.1:7233')), undefined);
    assert.equal(grpcStatusOf('not an error'), undefined);
    assert.equal(isTemporalUnavailable(grpcError(status.PERMISSION_DENIED, 'no')), false);
  });

  test('stops on a cause cycle', () => {
    const a = new Error('a');
    const b = new Error('b', { cause: a });
    Object.assign(a, { cause: b });
    assert.equal(grpcStatusOf(a), undefined);
  });
});

describe('connectWithRetry', () => {
  test('waits through transport errors and UNAVAILABLE, then returns the connection', async () => {
    const failures: Error[] = [
      new Error('tcp connect error: Connection refused'),
      new ServiceError('Failed to connect to Temporal server', { cause: grpcError(status.UNAVAILABLE, 'starting') }),
    ];
    let calls = 0;
    const waits: string[] = [];
    const result = await connectWithRetry({
      what: 'Temporal at test',
      connect: async () => {
        calls++;
        const failure = failures.shift();
        if (failure) throw failure;
        return 'connected';
      },
      timeoutMs: 10_000,
      onWait: (message) => waits.push(message),
    });
    assert.equal(result, 'connected');
    assert.equal(calls, 3);
    assert.deepEqual(waits, ['waiting for Temporal at test: tcp connect error: Connection refused']);
  });

  test('fails at once when the server answers with a status waiting cannot change', async () => {
    let calls = 0;
    const denied = new ServiceError('Failed to connect to Temporal server', {
      cause: grpcError(status.UNAUTHENTICATED, 'bad credentials'),
    });
    await assert.rejects(
      connectWithRetry({
        what: 'Temporal at test',
        connect: async () => {
          calls++;
          throw denied;
        },
        timeoutMs: 60_000,
      }),
      (err: unknown) => {
        assert.ok(err instanceof Error);
        assert.match(err.message, /^Temporal at test refused the connection \(UNAUTHENTICATED\)/);
        assert.equal(err.cause, denied);
        return true;
      },
    );
    assert.equal(calls, 1);
  });

  test('gives up on a real client connection to a closed port at the deadline', async () => {
    // A port that was free a moment ago: nothing listens on it.
    const port = await new Promise<number>((resolve) => {
      const server = net.createServer().listen(0, '127.0.0.1', () => {
        const { port: free } = server.address() as net.AddressInfo;
        server.close(() => resolve(free));
      });
    });
    const started = Date.now();
    await assert.rejects(
      connectWithRetry({
        what: `Temporal at 127.0.0.1:${port}`,
        connect: () => Connection.connect({ address: `127.0.0.1:${port}`, connectTimeout: 300 }),
        timeoutMs: 1000,
      }),
      new RegExp(`^Error: cannot reach Temporal at 127\\.0\\.0\\.1:${port} after 1000 ms`),
    );
    // Retried until the deadline, not failed on the first refusal; generous for a loaded machine.
    assert.ok(Date.now() - started >= 700, `gave up after ${Date.now() - started} ms`);
  });
});
