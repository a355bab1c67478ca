/**
 * zod schemas of a host failover's report (store/failovers.ts) for the API's answers and its OpenAPI document.
 * Checked at compile time to give exactly the store's type (exact-schema.ts): a field the store adds and this file
 * does not would otherwise be stripped from every answer by the serializer.
 */
import { z } from 'zod';
import {
  FAILOVER_STATES,
  type FailoverConfirmation,
  type FailoverReport,
  type FailoverVmOutcome,
  type WitnessVoteSummary,
} from '../store/failovers';
import { exactly } from './exact-schema';

export const WITNESS_VERDICTS = ['unreachable', 'alive'] as const satisfies readonly WitnessVoteSummary['verdict'][];
export const CONFIRMATION_MODES = ['majority', 'signed'] as const satisfies readonly FailoverConfirmation['mode'][];
export const FAILOVER_VM_OUTCOMES = [
  'restarted',
  'not-restartable',
  'not-ha',
  'withheld',
  'failed',
] as const satisfies readonly FailoverVmOutcome['outcome'][];

export const witnessVoteSchema = exactly<WitnessVoteSummary>()(
  z.object({
    witnessHostId: z.string(),
    verdict: z
      .enum(WITNESS_VERDICTS)
      .describe('What the witness saw of the suspect: `alive` if either its agent or its libvirt answered'),
    agentReachable: z.boolean().describe("Whether the suspect's host agent answered the witness's probe"),
    libvirtReachable: z.boolean().describe("Whether the suspect's libvirtd answered the witness's probe"),
    runningDomains: z
      .array(z.string())
      .optional()
      .describe('The domains libvirt listed as running on the suspect, when the witness reached its libvirtd'),
    accepted: z
      .boolean()
      .describe(
        "Whether the vote counted: from a witness that was asked, signed with its key, for this suspect's round and " +
          'token, fresh (failover.voteMaxAgeMs), one per witness',
      ),
    refusedReason: z
      .string()
      .optional()
      .describe(
        'Why the vote did not count: forged, not-asked, unknown-witness, wrong-suspect, replayed, stale, duplicate',
      ),
  }),
);

export const failoverConfirmationSchema = exactly<FailoverConfirmation>()(
  z.object({
    mode: z
      .enum(CONFIRMATION_MODES)
      .describe(
        '`majority`: a majority of the peer agents asked; `signed`: 2f+1 Ed25519-signed votes out of 3f+1 witnesses',
      ),
    asked: z.number().describe('Witnesses asked to probe the suspect'),
    needed: z.number().describe('Accepted `unreachable` votes needed to confirm the failure'),
    accepted: z.number().describe('Counted votes that found the suspect unreachable'),
    votes: z.array(witnessVoteSchema),
    confirmedAt: z.string().optional().describe('When enough votes were in; absent when the failure was not confirmed'),
  }),
);

export const failoverVmOutcomeSchema = exactly<FailoverVmOutcome>()(
  z.object({
    vmId: z.string(),
    name: z.string(),
    haPriority: z.number().describe('The VM spec `haPriority`: higher restarts first'),
    outcome: z
      .enum(FAILOVER_VM_OUTCOMES)
      .describe(
        "`restarted` on `targetHostId`; `not-restartable` (its disks on the failed host's local storage, or it was " +
          'not running there); `not-ha` (spec `ha: false`: left with its host); `withheld` (a witness saw it still ' +
          'running on the failed host: never started twice); `failed` (`reason` says why)',
      ),
    targetHostId: z.string().optional().describe('The host the VM was restarted on'),
    reason: z.string().optional().describe('Why the VM was not restarted, or how its restart failed'),
    restartedAt: z.string().optional(),
    durationMs: z.number().optional().describe("From the failover's `suspectedAt` to this VM's restart"),
  }),
);

export const failoverReportSchema = exactly<FailoverReport>()(
  z.object({
    id: z.string(),
    hostId: z.string().describe('The host that was suspected'),
    suspectToken: z.number().describe("The host's lease fencing token when its lease expired and it was suspected"),
    state: z
      .enum(FAILOVER_STATES)
      .describe(
        '`running`; `completed` (fenced, every restartable HA guest restarted); `not-confirmed` (too few witnesses found it ' +
          'unreachable, or none could witness: nothing fenced); `aborted` (its agent renewed the lease within the ' +
          'grace, or the lease moved on before the fence); `withheld` (fenced, but a guest a witness saw still ' +
          'running there was not restarted); `failed` (fenced, some HA guests did not restart); `reason` says which',
      ),
    suspectedAt: z.string().describe("When the host's lease expired: the moment it could first be suspected"),
    startedAt: z.string().describe('When the host monitor opened this failover'),
    graceEndedAt: z
      .string()
      .optional()
      .describe('When the grace (failover.graceMs after suspectedAt) ran out and the host was found still suspect'),
    confirmation: failoverConfirmationSchema.optional(),
    fencedAt: z.string().optional(),
    fencedToken: z
      .number()
      .optional()
      .describe('The fencing token the fence bumped the lease to; writes under any older token are refused'),
    vms: z.array(failoverVmOutcomeSchema).describe("What happened to each of the fenced host's guests"),
    reason: z.string().optional().describe('Why the failover ended as it did, when it did not complete'),
    finishedAt: z.string().optional(),
    detectionMs: z.number().optional().describe('From suspectedAt to startedAt: how long the monitor took to notice'),
    totalMs: z.number().optional().describe('From suspectedAt to finishedAt'),
  }),
);

export const failoverListSchema = z.object({ failovers: z.array(failoverReportSchema) });
