/**
 * The control side's check of the witnesses' signed votes on a suspect host: which votes count, and whether the
 * ones that do confirm the host unreachable. docs/failover-votes.md explains the thresholds and what they tolerate.
 */
import { verify } from 'node:crypto';
import type { KeyObject } from 'node:crypto';

import { witnessPublicKey } from './witness-key';
import {
  isWitnessVoteBody,
  witnessVoteSigningBytes,
  type SignedWitnessVote,
  type WitnessVerdict,
} from './witness-vote';

export type VoteRefusal =
  'forged' | 'unknown-witness' | 'replayed' | 'stale' | 'duplicate' | 'wrong-suspect' | 'not-asked';

export interface VoteCheck {
  witnessHostId: string;
  accepted: boolean;
  verdict?: WitnessVerdict;
  refusedReason?: VoteRefusal;
}

export type CertificateMode = 'majority' | 'signed';

export interface CertificateResult {
  mode: CertificateMode;
  /** Distinct witnesses asked. */
  asked: number;
  needed: number;
  /** Valid 'unreachable' votes, one per witness. */
  accepted: number;
  /** Valid 'alive' votes, one per witness. */
  alive: number;
  confirmed: boolean;
  /** One per vote received, in the order received. */
  checks: VoteCheck[];
}

export interface CheckVoteCertificateInput {
  mode: CertificateMode;
  round: string;
  suspectHostId: string;
  suspectToken: number;
  askedWitnesses: string[];
  /** Each witness host's registered public key: raw 32 bytes, base64. */
  publicKeys: Record<string, string>;
  votes: SignedWitnessVote[];
  now: Date;
  maxAgeMs: number;
}

/**
 * In 'signed' mode fewer witnesses than this never confirm. With 1 to 3 asked, f = 0: 2f+1 is one vote, so a
 * single faulty or lying witness would confirm on its own, against every other witness's answer.
 */
export const MIN_SIGNED_WITNESSES = 4;

/** majority: floor(asked/2)+1. signed: 2f+1 with f = floor((asked-1)/3), the faulty witnesses tolerated. */
export function votesNeeded(input: { mode: CertificateMode; asked: number }): number {
  if (!Number.isSafeInteger(input.asked) || input.asked < 0) {
    throw new RangeError(`asked must be a whole number of witnesses, got ${input.asked}`);
  }
  if (input.mode === 'majority') return Math.floor(input.asked / 2) + 1;
  return 2 * toleratedFaults(input.asked) + 1;
}

/** f: how many witnesses out of `asked` may lie or fail while a 2f+1 certificate still holds. */
export function toleratedFaults(asked: number): number {
  return Math.max(0, Math.floor((asked - 1) / 3));
}

export function checkVoteCertificate(input: CheckVoteCertificateInput): CertificateResult {
  const asked = new Set(input.askedWitnesses);
  const needed = votesNeeded({ mode: input.mode, asked: asked.size });
  const counted = new Set<string>();
  const keys = new Map<string, KeyObject | undefined>();
  const keyOf = (hostId: string) => {
    if (!keys.has(hostId)) {
      const raw = Object.hasOwn(input.publicKeys, hostId) ? input.publicKeys[hostId] : undefined;
      keys.set(hostId, typeof raw === 'string' ? witnessPublicKey(raw) : undefined);
    }
    return keys.get(hostId);
  };
  let accepted = 0;
  let alive = 0;
  const checks = input.votes.map((vote): VoteCheck => {
    const refusal = refusalOf(vote, input, asked, keyOf, counted);
    const witnessHostId = witnessOf(vote);
    if (refusal !== undefined) return { witnessHostId, accepted: false, refusedReason: refusal };
    const { verdict } = vote.body;
    counted.add(witnessHostId);
    if (verdict === 'unreachable') accepted += 1;
    else alive += 1;
    return { witnessHostId, accepted: true, verdict };
  });
  const enoughWitnesses = input.mode === 'majority' || asked.size >= MIN_SIGNED_WITNESSES;
  return {
    mode: input.mode,
    asked: asked.size,
    needed,
    accepted,
    alive,
    confirmed: enoughWitnesses && accepted >= needed,
    checks,
  };
}

/**
 * The checks run in this order: a claim inside a vote (its round, suspect, time) means something only once the
 * witness is known to have signed it, so the signature comes before them, and a second vote from a witness is
 * refused as a duplicate only when it would otherwise have counted. The first counted vote of a witness stands.
 */
function refusalOf(
  vote: SignedWitnessVote,
  input: CheckVoteCertificateInput,
  asked: ReadonlySet<string>,
  keyOf: (hostId: string) => KeyObject | undefined,
  counted: ReadonlySet<string>,
): VoteRefusal | undefined {
  const body: unknown = (vote as Partial<SignedWitnessVote> | null)?.body;
  if (!isWitnessVoteBody(body) || typeof vote.signature !== 'string') return 'forged';
  if (!asked.has(body.witnessHostId)) return 'not-asked';
  const key = keyOf(body.witnessHostId);
  if (key === undefined) return 'unknown-witness';
  if (!verify(null, witnessVoteSigningBytes(body), key, Buffer.from(vote.signature, 'base64'))) return 'forged';
  if (body.suspectHostId !== input.suspectHostId) return 'wrong-suspect';
  if (body.round !== input.round || body.suspectToken !== input.suspectToken) return 'replayed';
  if (Math.abs(input.now.getTime() - Date.parse(body.issuedAt)) > input.maxAgeMs) return 'stale';
  if (counted.has(body.witnessHostId)) return 'duplicate';
  return undefined;
}

function witnessOf(vote: SignedWitnessVote): string {
  const id: unknown = (vote as Partial<SignedWitnessVote> | null)?.body?.witnessHostId;
  return typeof id === 'string' ? id : '';
}
