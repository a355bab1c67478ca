import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';

import {
  checkVoteCertificate,
  toleratedFaults,
  votesNeeded,
  type CertificateMode,
  type CertificateResult,
} from './vote-certificate';
import { loadOrCreateWitnessKey, type WitnessKey } from './witness-key';
import { canonicalVoteBody, signWitnessVote, type SignedWitnessVote, type WitnessVoteBody } from './witness-vote';

const ROUND = 'failover-host-9-7';
const SUSPECT = 'host-9';
const TOKEN = 7;
const NOW = new Date('2026-03-01T12:00:00.000Z');
const MAX_AGE_MS = 30_000;

let pkiDir: string;
const keys: Record<string, WitnessKey> = {};
const publicKeys: Record<string, string> = {};

before(async () => {
  pkiDir = await mkdtemp(path.join(tmpdir(), 'novacron-votes-'));
  for (const hostId of ['host-1', 'host-2', 'host-3', 'host-4', 'host-5']) {
    keys[hostId] = await loadOrCreateWitnessKey({ pkiDir, hostId });
    publicKeys[hostId] = keys[hostId].publicKey;
  }
});

after(async () => {
  await rm(pkiDir, { recursive: true, force: true });
});

function vote(
  witness: string,
  overrides: Partial<Omit<WitnessVoteBody, 'witnessHostId'>> = {},
  signer: WitnessKey = keys[witness]!,
): SignedWitnessVote {
  const signed = signWitnessVote(signer, {
    round: ROUND,
    suspectHostId: SUSPECT,
    suspectToken: TOKEN,
    verdict: 'unreachable',
    agentReachable: false,
    libvirtReachable: false,
    issuedAt: new Date(NOW.getTime() - 1000).toISOString(),
    ...overrides,
  });
  // A vote signed with another host's key still names the witness it claims to come from.
  return { ...signed, body: { ...signed.body, witnessHostId: witness } };
}

function check(votes: SignedWitnessVote[], asked: string[], mode: CertificateMode = 'majority'): CertificateResult {
  return checkVoteCertificate({
    mode,
    round: ROUND,
    suspectHostId: SUSPECT,
    suspectToken: TOKEN,
    askedWitnesses: asked,
    publicKeys,
    votes,
    now: NOW,
    maxAgeMs: MAX_AGE_MS,
  });
}

const THREE = ['host-1', 'host-2', 'host-3'];
const FOUR = ['host-1', 'host-2', 'host-3', 'host-4'];

test('votesNeeded: a majority of those asked, or 2f+1 with f = floor((asked-1)/3)', () => {
  assert.deepEqual(
    [1, 2, 3, 4, 5].map((asked) => votesNeeded({ mode: 'majority', asked })),
    [1, 2, 2, 3, 3],
  );
  assert.deepEqual(
    [1, 3, 4, 6, 7, 10].map((asked) => votesNeeded({ mode: 'signed', asked })),
    [1, 1, 3, 3, 5, 7],
  );
  assert.deepEqual([1, 3, 4, 7, 10].map(toleratedFaults), [0, 0, 1, 2, 3]);
  assert.throws(() => votesNeeded({ mode: 'majority', asked: -1 }), RangeError);
});

test('a majority of valid unreachable votes confirms, and each vote is accepted with its verdict', () => {
  const result = check(
    [vote('host-1'), vote('host-2'), vote('host-3', { verdict: 'alive', agentReachable: true })],
    THREE,
  );
  assert.equal(result.confirmed, true);
  assert.deepEqual(
    { asked: result.asked, needed: result.needed, accepted: result.accepted, alive: result.alive },
    { asked: 3, needed: 2, accepted: 2, alive: 1 },
  );
  assert.deepEqual(result.checks, [
    { witnessHostId: 'host-1', accepted: true, verdict: 'unreachable' },
    { witnessHostId: 'host-2', accepted: true, verdict: 'unreachable' },
    { witnessHostId: 'host-3', accepted: true, verdict: 'alive' },
  ]);
});

test('too few unreachable votes do not confirm', () => {
  const result = check([vote('host-1'), vote('host-2', { verdict: 'alive', libvirtReachable: true })], THREE);
  assert.equal(result.confirmed, false);
  assert.equal(result.accepted, 1);
  assert.equal(result.alive, 1);
  assert.equal(check([], THREE).confirmed, false);
});

test('a vote whose body was changed after signing is forged', () => {
  const honest = vote('host-2', { verdict: 'alive', agentReachable: true });
  const tampered = { ...honest, body: { ...honest.body, verdict: 'unreachable' as const, agentReachable: false } };
  const flipped = vote('host-3');
  const badSignature = { ...flipped, signature: Buffer.alloc(64, 1).toString('base64') };
  const result = check([vote('host-1'), tampered, badSignature], THREE);
  assert.equal(result.confirmed, false);
  assert.deepEqual(
    result.checks.map((c) => c.refusedReason),
    [undefined, 'forged', 'forged'],
  );
});

test("a vote signed with another witness's key is forged", () => {
  const result = check([vote('host-1'), vote('host-2', {}, keys['host-1'])], THREE);
  assert.equal(result.confirmed, false);
  assert.equal(result.checks[1]?.refusedReason, 'forged');
});

test('an asked witness without a registered key, or with a malformed one, is an unknown witness', () => {
  const result = checkVoteCertificate({
    mode: 'majority',
    round: ROUND,
    suspectHostId: SUSPECT,
    suspectToken: TOKEN,
    askedWitnesses: THREE,
    publicKeys: { 'host-1': publicKeys['host-1']!, 'host-3': 'AAAA' },
    votes: [vote('host-1'), vote('host-2'), vote('host-3')],
    now: NOW,
    maxAgeMs: MAX_AGE_MS,
  });
  assert.equal(result.confirmed, false);
  assert.deepEqual(
    result.checks.map((c) => c.refusedReason),
    [undefined, 'unknown-witness', 'unknown-witness'],
  );
});

test('a vote from another round or another lease of the suspect is replayed; one about another host is refused', () => {
  const result = check(
    [
      vote('host-1', { round: 'failover-host-9-6' }),
      vote('host-2', { suspectToken: TOKEN - 1 }),
      vote('host-3', { suspectHostId: 'host-8' }),
    ],
    THREE,
  );
  assert.equal(result.confirmed, false);
  assert.equal(result.accepted, 0);
  assert.deepEqual(
    result.checks.map((c) => c.refusedReason),
    ['replayed', 'replayed', 'wrong-suspect'],
  );
});

test('a vote older than the age limit, or dated further than it in the future, is stale; one within it counts', () => {
  const at = (offsetMs: number) => new Date(NOW.getTime() + offsetMs).toISOString();
  const result = check(
    [
      vote('host-1', { issuedAt: at(-MAX_AGE_MS - 1) }),
      vote('host-2', { issuedAt: at(MAX_AGE_MS + 1) }),
      vote('host-3', { issuedAt: at(MAX_AGE_MS - 1) }),
    ],
    THREE,
  );
  assert.equal(result.confirmed, false);
  assert.deepEqual(
    result.checks.map((c) => c.refusedReason),
    ['stale', 'stale', undefined],
  );
});

test('a witness voting twice is counted once', () => {
  const result = check(
    [vote('host-1'), vote('host-1'), vote('host-2', { verdict: 'alive', agentReachable: true })],
    THREE,
  );
  assert.equal(result.confirmed, false);
  assert.equal(result.accepted, 1);
  assert.deepEqual(
    result.checks.map((c) => c.refusedReason),
    [undefined, 'duplicate', undefined],
  );
});

test('a vote from a host that was not asked does not count, even with a valid signature', () => {
  const result = check([vote('host-1'), vote('host-5')], THREE);
  assert.equal(result.confirmed, false);
  assert.deepEqual(
    result.checks.map((c) => c.refusedReason),
    [undefined, 'not-asked'],
  );
});

test('something that is not a vote is refused as forged, not thrown on', () => {
  const junk = [null, { body: { round: ROUND }, signature: 'x' }] as unknown as SignedWitnessVote[];
  const result = check([...junk, vote('host-1'), vote('host-2')], THREE);
  assert.equal(result.confirmed, true);
  assert.deepEqual(
    result.checks.map((c) => [c.witnessHostId, c.refusedReason]),
    [
      ['', 'forged'],
      ['', 'forged'],
      ['host-1', undefined],
      ['host-2', undefined],
    ],
  );
});

test('internet mode, f = 1: 3 of 4 asked are needed, 2 valid and 1 forged do not confirm, 3 valid do', () => {
  const forged = { ...vote('host-3'), signature: vote('host-4').signature };
  const short = check([vote('host-1'), vote('host-2'), forged], FOUR, 'signed');
  assert.equal(short.needed, 3);
  assert.equal(short.accepted, 2);
  assert.equal(short.confirmed, false);
  assert.equal(short.checks[2]?.refusedReason, 'forged');

  const full = check(
    [vote('host-1'), vote('host-2'), vote('host-3'), vote('host-4', { verdict: 'alive', agentReachable: true })],
    FOUR,
    'signed',
  );
  assert.deepEqual(
    { needed: full.needed, accepted: full.accepted, alive: full.alive, confirmed: full.confirmed },
    { needed: 3, accepted: 3, alive: 1, confirmed: true },
  );
});

test('internet mode with fewer than 4 witnesses never confirms: f = 0 tolerates no lying witness', () => {
  const result = check([vote('host-1'), vote('host-2'), vote('host-3')], THREE, 'signed');
  assert.equal(result.needed, 1);
  assert.equal(result.accepted, 3);
  assert.equal(result.confirmed, false);
});

test('the signed bytes are the fields in a fixed order, whatever order the body arrived in', () => {
  const signed = vote('host-1', { runningDomains: ['web-2', 'db-1'] });
  assert.deepEqual(signed.body.runningDomains, ['db-1', 'web-2']);
  const reordered = Object.fromEntries(Object.entries(signed.body).reverse()) as unknown as WitnessVoteBody;
  assert.equal(canonicalVoteBody(reordered), canonicalVoteBody(signed.body));
  assert.equal(
    canonicalVoteBody(signed.body),
    `{"round":"${ROUND}","suspectHostId":"${SUSPECT}","suspectToken":7,"witnessHostId":"host-1","verdict":"unreachable",` +
      `"agentReachable":false,"libvirtReachable":false,"runningDomains":["db-1","web-2"],"issuedAt":"${signed.body.issuedAt}"}`,
  );
  const result = check([{ body: reordered, signature: signed.signature }, vote('host-2')], THREE);
  assert.equal(result.confirmed, true);
});
