/**
 * ACP's signed votes for host failover: a witness host probes a suspect and signs what it saw with its Ed25519 key
 * (witness-key.ts, witness-vote.ts); the control side checks the votes of one round and decides whether they
 * confirm the suspect unreachable (vote-certificate.ts). docs/failover-votes.md describes the votes, the checks and
 * the thresholds.
 */
export * from './vote-certificate';
export * from './witness-key';
export * from './witness-vote';
