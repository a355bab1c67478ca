import { ApplicationFailure } from '@temporalio/activity';
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { VmStoreError } from '../store/vms';
import { permanent } from './store-failures';

test('a store refusal becomes a non-retryable failure typed by its code, unless named retryable', async () => {
  const busy = () => Promise.reject(new VmStoreError('VM web-1 is busy with workflow x', 'VmBusy'));
  await assert.rejects(permanent(busy), (err: unknown) => {
    assert.ok(err instanceof ApplicationFailure);
    assert.equal(err.type, 'VmBusy');
    assert.equal(err.nonRetryable, true);
    assert.equal(err.message, 'VM web-1 is busy with workflow x');
    return true;
  });
  await assert.rejects(permanent(busy, ['VmBusy']), VmStoreError);
  await assert.rejects(
    permanent(() => Promise.reject(new Error('connection reset'))),
    (err: unknown) => !(err instanceof ApplicationFailure),
  );
  assert.equal(await permanent(async () => 7), 7);
});
