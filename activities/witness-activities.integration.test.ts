/**
 * The witness against a real libvirtd from the harness: a daemon that answers makes the vote alive with its
 * (empty) list of active guests, and the same URI once the daemon is stopped makes it unreachable.
 */
import { MockActivityEnvironment } from '@temporalio/testing';
import { DefaultLogger } from '@temporalio/worker';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';

import { loadOrCreateWitnessKey, type SignedWitnessVote } from '../native/consensus';
import { assertHypervisorBinaries, startLocalHypervisors, type LocalHypervisors } from '../native/libvirt/harness';
import { createWitnessActivities, type WitnessHostInput } from './witness-activities';

let scratch: string;
let hypervisors: LocalHypervisors | undefined;

before(async () => {
  assertHypervisorBinaries();
  scratch = await mkdtemp(path.join(tmpdir(), 'novacron-witness-it-'));
  hypervisors = await startLocalHypervisors({ count: 1, baseDir: path.join(scratch, 'hv') });
});

after(async () => {
  await hypervisors?.stop();
  await rm(scratch, { recursive: true, force: true });
});

test("a harness libvirtd answers the witness; once it is stopped the same URI doesn't", async () => {
  const host = hypervisors!.hosts[0]!;
  const key = await loadOrCreateWitnessKey({ pkiDir: path.join(scratch, 'pki'), hostId: 'host-2' });
  const acts = createWitnessActivities({ hostId: 'host-2', key, probeTimeoutMs: 10_000 });
  const input: WitnessHostInput = { round: 'failover-host-1-1', suspectHostId: host.hostId, suspectToken: 1 };
  const witness = () =>
    new MockActivityEnvironment({}, { logger: new DefaultLogger('ERROR') }).run<
      [],
      SignedWitnessVote,
      () => Promise<SignedWitnessVote>
    >(() => acts.witnessHost({ ...input, peerLibvirtUri: host.uri }));

  const answered = await witness();
  assert.equal(answered.body.libvirtReachable, true);
  assert.equal(answered.body.agentReachable, false);
  // No agent answered: the vote says so, and libvirtd's answer (nothing running) goes with it.
  assert.equal(answered.body.verdict, 'unreachable');
  assert.deepEqual(answered.body.runningDomains, []);

  await hypervisors!.stop();
  hypervisors = undefined;
  const silent = await witness();
  assert.equal(silent.body.libvirtReachable, false);
  assert.equal(silent.body.verdict, 'unreachable');
  assert.equal(silent.body.runningDomains, undefined);
});
