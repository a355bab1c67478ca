/** How migrateVm's typed failures become API errors (errors.ts), without services: a table, checked row by row. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { migrationFailureError } from './errors';

test('typed failures of a started migration map to their statuses, the target named when the request named one', () => {
  const cases: Array<[string, boolean, number | undefined, string]> = [
    ['MigrationRefused', true, 422, 'no'],
    ['VmNotRunning', true, 409, 'no'],
    ['VmBusy', false, 409, 'no'],
    ['TargetHostUnavailable', true, 409, 'body.targetHostId: no'],
    ['TargetHostUnavailable', false, 409, 'no'],
    ['InvalidMigrationTarget', true, 422, 'body.targetHostId: no'],
    ['LocalStorageNotMigratable', true, 422, 'no'],
    ['TargetLacksStoragePool', true, 422, 'body.targetHostId: no'],
    ['MigrationJobFailed', true, undefined, ''],
    ['toString', true, undefined, ''],
  ];
  for (const [type, targetNamed, status, message] of cases) {
    const error = migrationFailureError({ type, message: 'no' }, { targetNamed });
    assert.equal(error?.statusCode, status, type);
    if (error) {
      assert.equal(error.code, type);
      assert.equal(error.message, message);
    }
  }
  assert.equal(migrationFailureError({ message: 'untyped' }, { targetNamed: false }), undefined);
});
