/**
 * The store's refusals as activity failures: a VmStoreError no retry can fix (the VM is gone, busy, owned by
 * another host...) is non-retryable and typed by its code, so the workflow and the API can tell them apart; one the
 * caller names as transient (a lease about to be renewed) is left for Temporal to retry.
 */
import { ApplicationFailure } from '@temporalio/activity';
import { VmStoreError } from '../store/vms';

export async function permanent<T>(
  work: () => Promise<T>,
  retryable: ReadonlyArray<VmStoreError['code']> = [],
): Promise<T> {
  try {
    return await work();
  } catch (err) {
    if (err instanceof VmStoreError && !retryable.includes(err.code)) {
      throw ApplicationFailure.nonRetryable(err.message, err.code);
    }
    throw err;
  }
}
