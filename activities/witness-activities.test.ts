/**
 * The witness activity against real sockets on loopback: a listening agent, a closed port, and virsh against a
 * libvirtd that is not there. The libvirt answers that need a daemon with guests come from a fake connection;
 * witness-activities.integration.test.ts asks a real harness libvirtd.
 */
import { MockActivityEnvironment } from '@temporalio/testing';
import { ApplicationFailure, CancelledFailure } from '@temporalio/common';
import { DefaultLogger } from '@temporalio/worker';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, type AddressInfo, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';

import {
  checkVoteCertificate,
  loadOrCreateWitnessKey,
  type SignedWitnessVote,
  type WitnessKey,
} from '../native/consensus';
import { LibvirtError, LibvirtErrorCode, type DomainState, type DomainSummary } from '../native/libvirt';
import { createWitnessActivities, type WitnessActivityDeps, type WitnessHostInput } from './witness-activities';

const ROUND = 'failover-host-9-3';
const BASE: WitnessHostInput = { round: ROUND, suspectHostId: 'host-9', suspectToken: 3 };
// A socket path that cannot exist: virsh fails to connect at once.
const BOGUS_URI = 'qemu:///system?socket=/nonexistent/novacron-witness-test/libvirt-sock';

// The mock logs every failed activity as a warning; the failures these tests provoke are asserted instead.
const QUIET = new DefaultLogger('ERROR');

let pkiDir: string;
let key: WitnessKey;
let listener: Server;
let openEndpoint: string;
let closedEndpoint: string;

before(async () => {
  pkiDir = await mkdtemp(path.join(tmpdir(), 'novacron-witness-'));
  key = await loadOrCreateWitnessKey({ pkiDir, hostId: 'host-1' });
  listener = createServer((socket) => socket.destroy());
  await new Promise<void>((resolve) => listener.listen(0, '127.0.0.1', resolve));
  openEndpoint = `127.0.0.1:${(listener.address() as AddressInfo).port}`;
  // A port that was just bound and released: nothing listens there.
  const closed = createServer();
  await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve));
  closedEndpoint = `127.0.0.1:${(closed.address() as AddressInfo).port}`;
  await new Promise<void>((resolve) => closed.close(() => resolve()));
});

after(async () => {
  await new Promise<void>((resolve) => listener.close(() => resolve()));
  await rm(pkiDir, { recursive: true, force: true });
});

function witness(overrides: Partial<WitnessActivityDeps> = {}) {
  const acts = createWitnessActivities({ hostId: 'host-1', key, probeTimeoutMs: 1500, ...overrides });
  return (input: WitnessHostInput) =>
    new MockActivityEnvironment({}, { logger: QUIET }).run<[], SignedWitnessVote, () => Promise<SignedWitnessVote>>(
      () => acts.witnessHost(input),
    );
}

/** How the control side reads the vote: accepted, with its verdict, or refused with a reason. */
function controlCheck(vote: SignedWitnessVote) {
  const result = checkVoteCertificate({
    mode: 'majority',
    round: ROUND,
    suspectHostId: 'host-9',
    suspectToken: 3,
    askedWitnesses: ['host-1'],
    publicKeys: { 'host-1': key.publicKey },
    votes: [vote],
    now: new Date(),
    maxAgeMs: 30_000,
  });
  return { check: result.checks[0], confirmed: result.confirmed };
}

test('an agent that accepts the connection makes the witness vote alive, signed as this host', async () => {
  const vote = await witness()({ ...BASE, agentEndpoint: openEndpoint });
  assert.deepEqual(
    { ...vote.body, issuedAt: undefined },
    {
      round: ROUND,
      suspectHostId: 'host-9',
      suspectToken: 3,
      witnessHostId: 'host-1',
      verdict: 'alive',
      agentReachable: true,
      libvirtReachable: false,
      issuedAt: undefined,
    },
  );
  assert.ok(Math.abs(Date.parse(vote.body.issuedAt) - Date.now()) < 60_000);
  assert.deepEqual(controlCheck(vote), {
    check: { witnessHostId: 'host-1', accepted: true, verdict: 'alive' },
    confirmed: false,
  });
});

test('a closed agent port and an absent libvirtd make the vote unreachable, which the control side counts', async () => {
  const vote = await witness()({ ...BASE, agentEndpoint: closedEndpoint, peerLibvirtUri: BOGUS_URI });
  assert.equal(vote.body.verdict, 'unreachable');
  assert.equal(vote.body.agentReachable, false);
  assert.equal(vote.body.libvirtReachable, false);
  assert.equal(vote.body.runningDomains, undefined);
  assert.deepEqual(controlCheck(vote), {
    check: { witnessHostId: 'host-1', accepted: true, verdict: 'unreachable' },
    confirmed: true,
  });
});

test('a channel with no endpoint or URI counts as unreachable', async () => {
  const vote = await witness()(BASE);
  assert.equal(vote.body.verdict, 'unreachable');
  assert.equal(vote.body.agentReachable, false);
  assert.equal(vote.body.libvirtReachable, false);
});

test('libvirtd answering beside a dead agent votes unreachable and names every active domain', async () => {
  let askedStates: readonly DomainState[] | undefined;
  let askedUri: string | undefined;
  const domains: DomainSummary[] = [
    { name: 'web-2', uuid: '00000000-0000-4000-8000-000000000002', state: 'paused' },
    { name: 'db-1', uuid: '00000000-0000-4000-8000-000000000001', state: 'running' },
  ];
  const vote = await witness({
    connectLibvirt: (uri) => {
      askedUri = uri;
      return {
        listAllDomains: async (input = {}) => {
          askedStates = input.states;
          return domains;
        },
      };
    },
  })({ ...BASE, agentEndpoint: closedEndpoint, peerLibvirtUri: 'qemu+tcp://10.0.0.9/system' });
  assert.equal(askedUri, 'qemu+tcp://10.0.0.9/system');
  assert.ok(askedStates, 'the witness asks for domains by state');
  assert.ok(askedStates.includes('running') && askedStates.includes('paused'), String(askedStates));
  assert.ok(!askedStates.includes('shutoff'));
  assert.equal(vote.body.verdict, 'unreachable');
  assert.equal(vote.body.agentReachable, false);
  assert.equal(vote.body.libvirtReachable, true);
  assert.deepEqual(vote.body.runningDomains, ['db-1', 'web-2']);
  assert.equal(controlCheck(vote).check?.accepted, true);
});

test(
  'a libvirtd that does not answer within the probe timeout counts as unreachable',
  { timeout: 10_000 },
  async () => {
    const started = Date.now();
    const vote = await witness({
      probeTimeoutMs: 200,
      connectLibvirt: () => ({ listAllDomains: () => new Promise<never>(() => undefined) }),
    })({ ...BASE, peerLibvirtUri: 'qemu+tcp://10.0.0.9/system' });
    assert.equal(vote.body.verdict, 'unreachable');
    assert.equal(vote.body.libvirtReachable, false);
    assert.ok(Date.now() - started < 10_000, `took ${Date.now() - started} ms`);
  },
);

test('a cancelled witness stops probing and fails as cancelled, bounded by the probe timeout', async () => {
  const env = new MockActivityEnvironment({}, { logger: QUIET });
  const acts = createWitnessActivities({
    hostId: 'host-1',
    key,
    probeTimeoutMs: 300,
    connectLibvirt: () => ({ listAllDomains: () => new Promise<never>(() => undefined) }),
  });
  const running = env.run<[], SignedWitnessVote, () => Promise<SignedWitnessVote>>(() =>
    acts.witnessHost({ ...BASE, agentEndpoint: openEndpoint, peerLibvirtUri: 'qemu+tcp://10.0.0.9/system' }),
  );
  env.cancel();
  await assert.rejects(running, CancelledFailure);
});

test('a libvirt error is no answer, but a witness that could not run virsh at all does not vote', async () => {
  const refused = new LibvirtError({
    message: 'list domains: authentication failed',
    code: LibvirtErrorCode.unknown,
    operation: 'list domains',
  });
  const vote = await witness({ connectLibvirt: () => ({ listAllDomains: () => Promise.reject(refused) }) })({
    ...BASE,
    peerLibvirtUri: 'qemu+tcp://10.0.0.9/system',
  });
  assert.equal(vote.body.libvirtReachable, false);

  const missing = Object.assign(new Error('spawn virsh ENOENT'), { code: 'ENOENT' });
  await assert.rejects(
    witness({ connectLibvirt: () => ({ listAllDomains: () => Promise.reject(missing) }) })({
      ...BASE,
      peerLibvirtUri: 'qemu+tcp://10.0.0.9/system',
    }),
    /ENOENT/,
  );
});

test('a malformed endpoint or a host asked about itself fails permanently instead of voting', async () => {
  for (const agentEndpoint of ['127.0.0.1', 'host:0', 'host:70000', ':8443', 'a b:1']) {
    await assert.rejects(
      witness()({ ...BASE, agentEndpoint }),
      (err: unknown) => err instanceof ApplicationFailure && err.nonRetryable && err.type === 'InvalidWitnessInput',
      agentEndpoint,
    );
  }
  await assert.rejects(
    witness()({ ...BASE, suspectHostId: 'host-1' }),
    (err: unknown) => err instanceof ApplicationFailure && err.nonRetryable && err.type === 'InvalidWitnessInput',
  );
  // An IPv6 literal in brackets parses; whether this machine has IPv6 decides only what the probe sees.
  const ipv6 = await witness()({ ...BASE, agentEndpoint: `[::1]:${closedEndpoint.split(':')[1]}` });
  assert.equal(ipv6.body.agentReachable, false);
});

test("a witness built with another host's key is refused at once", () => {
  assert.throws(() => createWitnessActivities({ hostId: 'host-2', key, probeTimeoutMs: 1500 }), /belongs to host-1/);
});
