import assert from 'node:assert/strict';
import { test } from 'node:test';

import { TestGuestWorkloadError, parseConsoleLog, testGuestOemStrings } from './workload';

test('the workload knobs become the OEM strings workload.c reads, with the default working set', () => {
  assert.deepEqual(testGuestOemStrings({ dirtyMiBps: 0 }), ['novacron.dirty-mibps=0', 'novacron.working-set-mib=64']);
  assert.deepEqual(testGuestOemStrings({ dirtyMiBps: 150, workingSetMiB: 128 }), [
    'novacron.dirty-mibps=150',
    'novacron.working-set-mib=128',
  ]);
  for (const workload of [
    { dirtyMiBps: -1 },
    { dirtyMiBps: 1.5 },
    { dirtyMiBps: 100_001 },
    { dirtyMiBps: 1, workingSetMiB: 0 },
  ]) {
    assert.throws(() => testGuestOemStrings(workload), TestGuestWorkloadError);
  }
});

test('a console log gives the heartbeats in order and the settings the workload started with', () => {
  const log = [
    'SYSLINUX 6.04 EDD 20210613 Copyright (C) 1994-2015 H. Peter Anvin et al\r',
    '[    0.000000] Linux version 6.1.0\r',
    'novacron-testguest: workload started at 2.01 s uptime: dirty-mibps=200 working-set-mib=32\r',
    'novacron-testguest heartbeat 0\r',
    'novacron-testguest heartbeat 1\r',
    'novacron-testguest heartbeat 2',
    'novacron-testguest heartbe',
  ].join('\n');
  assert.deepEqual(parseConsoleLog(log), {
    heartbeats: [0, 1, 2],
    started: { uptimeSeconds: 2.01, dirtyMiBps: 200, workingSetMiB: 32 },
  });
  assert.deepEqual(parseConsoleLog('novacron-testguest: error: bad OEM string\r\n'), {
    heartbeats: [],
    error: 'bad OEM string',
  });
});

test('a console log gives the kernel panic that ended the guest, with its reason', () => {
  const log = [
    'novacron-testguest heartbeat 7\r',
    '[   32.518737]  __stack_chk_fail+0x10/0x10\r',
    '[   32.538316] ---[ end Kernel panic - not syncing: stack-protector: Kernel stack is corrupted in: __schedule ]---\r',
  ].join('\n');
  assert.deepEqual(parseConsoleLog(log), {
    heartbeats: [7],
    panic: 'Kernel panic - not syncing: stack-protector: Kernel stack is corrupted in: __schedule',
  });
  assert.equal(parseConsoleLog('novacron-testguest heartbeat 1\r\n').panic, undefined);
});
