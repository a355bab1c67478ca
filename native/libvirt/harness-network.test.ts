import assert from 'node:assert/strict';
import { test } from 'node:test';

import { HarnessError } from './harness-error';
import { bridgeMacAddress, capQdiscArgs, formatIpv4, hostLinkNames, instanceTag, pickSubnet } from './harness-network';

test('names derive from the base directory and fit an interface name (15 bytes)', () => {
  const tag = instanceTag('/tmp/novacron-test-abc/hv');
  assert.match(tag, /^[0-9a-f]{8}$/);
  assert.equal(instanceTag('/tmp/novacron-test-abc/hv'), tag);
  assert.notEqual(instanceTag('/tmp/novacron-test-abd/hv'), tag);
  const names = hostLinkNames(tag, 64);
  assert.ok(Buffer.byteLength(names.rootDevice) <= 15, names.rootDevice);
  assert.equal(names.netns, `novacron-hv-${tag}-64`);
});

test("the bridge's MAC is a locally administered unicast address from the tag", () => {
  assert.equal(bridgeMacAddress('0a1b2c3d'), '02:0a:1b:2c:3d:01');
  assert.notEqual(bridgeMacAddress(instanceTag('/a')), bridgeMacAddress(instanceTag('/b')));
});

test('the subnet is a /24 in 10.128.0.0/10 that no route overlaps, default routes aside', () => {
  const tag = 'abcd0000';
  const free = pickSubnet(tag, ['default', '192.0.2.0/24', '127.0.0.1']);
  assert.equal(free % 256, 0);
  assert.match(formatIpv4(free), /^10\.(1[2-8]\d|19[01])\.\d+\.0$/);
  // Taken by a /24, then by a host route inside the next: each moves it on by one /24.
  assert.equal(pickSubnet(tag, [`${formatIpv4(free)}/24`]), free + 256);
  assert.equal(pickSubnet(tag, [`${formatIpv4(free)}/24`, formatIpv4(free + 256 + 9)]), free + 512);
  // A wider route moves it past the whole route; past the last /24 it wraps round to the first.
  assert.equal(formatIpv4(pickSubnet('00000000', ['10.128.0.0/16'])), '10.129.0.0');
  assert.equal(formatIpv4(pickSubnet('ffff0000', [])), '10.191.255.0');
  assert.equal(formatIpv4(pickSubnet('ffff0000', ['10.191.255.7'])), '10.128.0.0');
  assert.throws(() => pickSubnet(tag, ['10.128.0.0/10']), HarnessError);
});

test('a cap is tbf, with netem as its parent when it adds latency', () => {
  assert.deepEqual(capQdiscArgs('eth0', { rateMbit: 100 }), [
    [
      'qdisc',
      'add',
      'dev',
      'eth0',
      'root',
      'handle',
      '1:',
      'tbf',
      'rate',
      '100mbit',
      'burst',
      '64kb',
      'latency',
      '50ms',
    ],
  ]);
  assert.equal(capQdiscArgs('eth0', { rateMbit: 1000 })[0]![11], '500kb', 'about 4 ms at the rate');
  assert.deepEqual(capQdiscArgs('v', { rateMbit: 10, burstKb: 16, latencyMs: 20 }), [
    ['qdisc', 'add', 'dev', 'v', 'root', 'handle', '1:', 'netem', 'delay', '20ms'],
    [
      'qdisc',
      'add',
      'dev',
      'v',
      'parent',
      '1:1',
      'handle',
      '10:',
      'tbf',
      'rate',
      '10mbit',
      'burst',
      '16kb',
      'latency',
      '50ms',
    ],
  ]);
  for (const bad of [
    { rateMbit: 0 },
    { rateMbit: Number.NaN },
    { rateMbit: 1, burstKb: -1 },
    { rateMbit: 1, latencyMs: -1 },
  ]) {
    assert.throws(() => capQdiscArgs('eth0', bad), HarnessError, JSON.stringify(bad));
  }
});
