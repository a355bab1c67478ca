/**
 * A witness's vote on a suspect host, and the exact bytes its signature covers.
 */
import type { WitnessKey } from './witness-key';

export type WitnessVerdict = 'unreachable' | 'alive';

export interface WitnessVoteBody {
  /** The failover workflow's id: a vote answers one round only. */
  round: string;
  suspectHostId: string;
  /** The suspect's fencing token when the round began: a vote from an earlier lease of the host does not count. */
  suspectToken: number;
  witnessHostId: string;
  verdict: WitnessVerdict;
  agentReachable: boolean;
  libvirtReachable: boolean;
  /** The domains the suspect's libvirtd showed active, when it answered. */
  runningDomains?: string[];
  /** ISO 8601. */
  issuedAt: string;
}

export interface SignedWitnessVote {
  body: WitnessVoteBody;
  /** Ed25519 over witnessVoteSigningBytes(body), base64. */
  signature: string;
}

// Binds a signature to this purpose and layout, so bytes signed by a witness key can never be read as anything else.
const SIGNING_CONTEXT = 'novacron-witness-vote-v1\n';

/**
 * The canonical form of a vote body: the fields in this fixed order, nothing else. JSON.stringify alone would sign
 * the object's property order, which is how it was built, not what it says: a body that travels through Temporal's
 * payload converter or is rebuilt with a spread may come back in another order and fail verification, and
 * properties outside the contract would ride along inside the signature. Each value is still encoded by
 * JSON.stringify, whose output for a string, a finite number or a boolean does not vary.
 */
const FIELD_ORDER = [
  'round',
  'suspectHostId',
  'suspectToken',
  'witnessHostId',
  'verdict',
  'agentReachable',
  'libvirtReachable',
  'runningDomains',
  'issuedAt',
] as const satisfies readonly (keyof WitnessVoteBody)[];

export function canonicalVoteBody(body: WitnessVoteBody): string {
  const fields = FIELD_ORDER.filter((name) => body[name] !== undefined).map(
    (name) => `${JSON.stringify(name)}:${JSON.stringify(body[name])}`,
  );
  return `{${fields.join(',')}}`;
}

export function witnessVoteSigningBytes(body: WitnessVoteBody): Buffer {
  return Buffer.from(SIGNING_CONTEXT + canonicalVoteBody(body), 'utf8');
}

/** Signs the vote as the key's host. The domains are sorted so that one libvirt answer always signs the same. */
export function signWitnessVote(key: WitnessKey, body: Omit<WitnessVoteBody, 'witnessHostId'>): SignedWitnessVote {
  const full: WitnessVoteBody = {
    round: body.round,
    suspectHostId: body.suspectHostId,
    suspectToken: body.suspectToken,
    witnessHostId: key.hostId,
    verdict: body.verdict,
    agentReachable: body.agentReachable,
    libvirtReachable: body.libvirtReachable,
    ...(body.runningDomains === undefined ? {} : { runningDomains: [...body.runningDomains].sort() }),
    issuedAt: body.issuedAt,
  };
  return { body: full, signature: key.sign(witnessVoteSigningBytes(full)) };
}

/** Whether a value that arrived over the wire has the vote body's shape; the signature is checked separately. */
export function isWitnessVoteBody(value: unknown): value is WitnessVoteBody {
  if (typeof value !== 'object' || value === null) return false;
  const v = value as Record<string, unknown>;
  return (
    typeof v.round === 'string' &&
    typeof v.suspectHostId === 'string' &&
    typeof v.suspectToken === 'number' &&
    Number.isSafeInteger(v.suspectToken) &&
    typeof v.witnessHostId === 'string' &&
    (v.verdict === 'unreachable' || v.verdict === 'alive') &&
    typeof v.agentReachable === 'boolean' &&
    typeof v.libvirtReachable === 'boolean' &&
    (v.runningDomains === undefined ||
      (Array.isArray(v.runningDomains) && v.runningDomains.every((d) => typeof d === 'string'))) &&
    typeof v.issuedAt === 'string' &&
    Number.isFinite(Date.parse(v.issuedAt))
  );
}
