import assert from 'node:assert/strict';
import { test } from 'node:test';
import { migrationPolicySchema, type MigrationPlanInput, type MigrationPolicyInput } from './migration';
import {
  CHANNELS_WITHOUT_CPU_FIGURE,
  DEFAULT_MAX_PASSES,
  MIGRATION_SETUP_MS,
  migrationDeadlineMs,
  planMigration,
  predictPrecopy,
} from './migration-plan';

const MIB = 1024 * 1024;
const GIB = 1024 * MIB;
const GBIT = 125_000_000;

function planInput(over: Partial<MigrationPlanInput> = {}, policy: MigrationPolicyInput = {}): MigrationPlanInput {
  return {
    memoryBytes: 4 * GIB,
    dirtyRateBytesPerSecond: 1 * MIB,
    linkBandwidthBytesPerSecond: 10 * GBIT,
    linkRttMs: 0.5,
    mode: 'datacenter',
    policy: migrationPolicySchema.parse(policy),
    ...over,
  };
}

// 1 Gbit/s is about 119 MiB/s: a guest dirtying 150 MiB/s outruns it.
const hot = { dirtyRateBytesPerSecond: 150 * MIB, linkBandwidthBytesPerSecond: GBIT, mode: 'hybrid' as const };

test('an idle guest converges in one or two passes, with a downtime well under 300 ms', () => {
  const prediction = predictPrecopy({
    memoryBytes: 4 * GIB,
    dirtyRateBytesPerSecond: 1 * MIB,
    bandwidthBytesPerSecond: 10 * GBIT,
    maxDowntimeMs: 300,
    rttMs: 0.5,
  });
  assert.equal(prediction.converges, true);
  assert.ok(prediction.passes >= 1 && prediction.passes <= 2, `passes ${prediction.passes}`);
  assert.ok(prediction.downtimeMs < 300, `downtime ${prediction.downtimeMs}`);
  // Pass 0 is all of memory once, at 1.25 GB/s about 3.4 s, plus the setup cost.
  assert.ok(prediction.totalMs > MIGRATION_SETUP_MS + 3000 && prediction.totalMs < MIGRATION_SETUP_MS + 4000);
  assert.ok(prediction.bytes >= 4 * GIB && prediction.bytes < 4 * GIB + 10 * MIB);
  assert.equal(prediction.reason, undefined);
});

test('a guest small enough to fit in the downtime switches over without a pass', () => {
  const prediction = predictPrecopy({
    memoryBytes: 64 * MIB,
    dirtyRateBytesPerSecond: 500 * MIB,
    bandwidthBytesPerSecond: 10 * GBIT,
    maxDowntimeMs: 300,
    rttMs: 1,
  });
  assert.equal(prediction.converges, true);
  assert.equal(prediction.passes, 0);
  assert.ok(prediction.downtimeMs < 300);
});

test('a guest dirtying faster than the link is predicted not to converge, with the figures', () => {
  const prediction = predictPrecopy({
    memoryBytes: 4 * GIB,
    dirtyRateBytesPerSecond: 150 * MIB,
    bandwidthBytesPerSecond: GBIT,
    maxDowntimeMs: 300,
    rttMs: 20,
  });
  assert.equal(prediction.converges, false);
  assert.equal(prediction.passes, DEFAULT_MAX_PASSES);
  assert.match(prediction.reason!, /dirties 150 MiB\/s against a 119 MiB\/s link/);
  assert.match(prediction.reason!, /4096 MiB remain where a 300 ms downtime lets 36 MiB through/);
  assert.match(prediction.reason!, /does not outpace/);
});

test('within the margin the pass model is not trusted, and passes can run out below it', () => {
  const near = predictPrecopy({
    memoryBytes: 400 * MIB,
    dirtyRateBytesPerSecond: 0.95 * GBIT,
    bandwidthBytesPerSecond: GBIT,
    maxDowntimeMs: 2000,
    rttMs: 1,
  });
  assert.equal(near.converges, false);
  assert.match(near.reason!, /does not outpace the dirty rate by 10 %/);
  // Shrinking by 15 % a pass, 4 GiB needs 31 passes to fit 30 MiB: the cap comes first.
  const slow = predictPrecopy({
    memoryBytes: 4 * GIB,
    dirtyRateBytesPerSecond: 85 * MIB,
    bandwidthBytesPerSecond: 100 * MIB,
    maxDowntimeMs: 300,
    rttMs: 1,
  });
  assert.equal(slow.converges, false);
  assert.match(slow.reason!, /passes ran out \(30\)/);
  assert.ok(
    predictPrecopy({
      memoryBytes: 4 * GIB,
      dirtyRateBytesPerSecond: 85 * MIB,
      bandwidthBytesPerSecond: 100 * MIB,
      maxDowntimeMs: 300,
      rttMs: 1,
      maxPasses: 40,
    }).converges,
  );
});

test('bad figures are programming errors', () => {
  const base = { memoryBytes: GIB, dirtyRateBytesPerSecond: 0, bandwidthBytesPerSecond: GBIT, maxDowntimeMs: 300 };
  assert.throws(() => predictPrecopy({ ...base, rttMs: -1 }), RangeError);
  assert.throws(() => predictPrecopy({ ...base, rttMs: 1, memoryBytes: NaN }), RangeError);
  assert.equal(predictPrecopy({ ...base, rttMs: 1, bandwidthBytesPerSecond: 0 }).converges, false);
});

test('an idle guest is planned with no mitigation and the policy downtime', () => {
  const outcome = planMigration(planInput());
  assert.ok(outcome.ok);
  assert.equal(outcome.plan.mitigation, 'none');
  assert.equal(outcome.plan.parameters.maxDowntimeMs, 300);
  assert.equal(outcome.plan.parameters.autoConverge, true, 'armed whenever allowed: QEMU throttles only on a stall');
  assert.equal(outcome.plan.parameters.postCopy, false);
  assert.equal(outcome.plan.deadlineMs, 600_000);
  assert.equal('policy' in outcome.plan.inputs, false);
  assert.equal(outcome.plan.inputs.memoryBytes, 4 * GIB);
});

test('a guest that outruns the link is refused when escalation is forbidden', () => {
  const outcome = planMigration(planInput(hot, { escalation: 'forbidden' }));
  assert.equal(outcome.ok, false);
  assert.ok(!outcome.ok);
  assert.match(outcome.reason, /150 MiB\/s against a 119 MiB\/s link/);
  assert.match(outcome.reason, /forbids escalation/);
  assert.equal(outcome.plan.prediction.converges, false);
});

test('a guest that outruns the link is armed with auto-converge, or post-copy, when allowed', () => {
  const auto = planMigration(planInput(hot));
  assert.ok(auto.ok);
  assert.equal(auto.plan.mitigation, 'auto-converge');
  assert.equal(auto.plan.parameters.autoConverge, true);

  const both = planMigration(planInput(hot, { allowPostCopy: true }));
  assert.ok(both.ok);
  assert.equal(both.plan.mitigation, 'auto-converge', 'the first step taken; post-copy is armed behind it');
  assert.equal(both.plan.parameters.postCopy, true);

  const post = planMigration(planInput(hot, { allowAutoConverge: false, allowPostCopy: true }));
  assert.ok(post.ok);
  assert.equal(post.plan.mitigation, 'post-copy');
  assert.deepEqual(
    [post.plan.parameters.autoConverge, post.plan.parameters.postCopy, post.plan.parameters.parallelConnections],
    [false, true, 1],
  );

  const neither = planMigration(planInput(hot, { allowAutoConverge: false }));
  assert.ok(!neither.ok);
  assert.match(neither.reason, /will not converge even at the 2000 ms ceiling/);
  assert.match(neither.reason, /allows neither auto-converge nor post-copy/);
});

test('a guest that converges only at the downtime ceiling needs no mitigation, unless escalation is forbidden', () => {
  const input = { dirtyRateBytesPerSecond: 85 * MIB, linkBandwidthBytesPerSecond: 100 * MIB, mode: 'hybrid' as const };
  const outcome = planMigration(planInput(input, { allowAutoConverge: false }));
  assert.ok(outcome.ok, outcome.ok ? '' : outcome.reason);
  assert.equal(outcome.plan.mitigation, 'none');
  assert.equal(outcome.plan.prediction.converges, false, 'the prediction is at the starting downtime');
  assert.equal(planMigration(planInput(input, { escalation: 'forbidden' })).ok, false);
});

test('a migration that cannot copy memory once before its deadline is refused whatever the policy', () => {
  const slow = { linkBandwidthBytesPerSecond: 5 * MIB, mode: 'internet' as const, linkRttMs: 80 };
  const outcome = planMigration(planInput(slow, { allowPostCopy: true }));
  assert.ok(!outcome.ok);
  assert.match(outcome.reason, /copying 4096 MiB once over a 5.0 MiB\/s link outlasts its 600 s deadline/);
  assert.equal(planMigration(planInput({ linkBandwidthBytesPerSecond: 0 })).ok, false);
  // Converging, but not in time: pass 0 alone takes 512 s, and with the guest dirtying half the link's rate the 11
  // passes sum to about 1020 s, past 600 s, so the plan treats it as not converging.
  const late = { linkBandwidthBytesPerSecond: 8 * MIB, dirtyRateBytesPerSecond: 4 * MIB, mode: 'internet' as const };
  const prediction = planMigration(planInput(late)).plan.prediction;
  assert.deepEqual([prediction.converges, prediction.passes], [true, 11]);
  assert.ok(prediction.totalMs > 1_000_000, `${prediction.totalMs}`);
  const refused = planMigration(planInput(late, { escalation: 'forbidden' }));
  assert.ok(!refused.ok);
  assert.match(refused.reason, /predicted to take \d+ s, past its 600 s deadline \(150 s per GiB\)/);
  const armed = planMigration(planInput(late));
  assert.ok(armed.ok);
  assert.equal(armed.plan.mitigation, 'auto-converge');
});

test('parallel connections: more on fat links with CPU to spare, one where multifd buys nothing', () => {
  const channels = (over: Partial<MigrationPlanInput>, policy: MigrationPolicyInput = {}) =>
    planMigration(planInput(over, policy)).plan.parameters.parallelConnections;
  assert.equal(channels({ linkBandwidthBytesPerSecond: 25 * GBIT, spareCpus: 16 }), 5);
  assert.equal(channels({ linkBandwidthBytesPerSecond: 100 * GBIT, spareCpus: 16 }), 8);
  assert.equal(channels({ linkBandwidthBytesPerSecond: 25 * GBIT, spareCpus: 3.5 }), 3);
  assert.equal(channels({ linkBandwidthBytesPerSecond: 25 * GBIT, spareCpus: 0 }), 1);
  assert.equal(channels({ linkBandwidthBytesPerSecond: 25 * GBIT }), CHANNELS_WITHOUT_CPU_FIGURE);
  assert.equal(channels({ linkBandwidthBytesPerSecond: 2 * GBIT, spareCpus: 16 }), 1);
  assert.equal(channels({ linkBandwidthBytesPerSecond: 25 * GBIT, spareCpus: 16 }, { bandwidthMiBps: 500 }), 1);
  assert.equal(channels({ linkBandwidthBytesPerSecond: 25 * GBIT, spareCpus: 16, mode: 'internet' }), 1);
  assert.equal(channels({ linkBandwidthBytesPerSecond: 25 * GBIT, spareCpus: 16 }, { allowPostCopy: true }), 1);
});

test('bandwidth: the policy cap, else unset in the datacenter and the measured link elsewhere', () => {
  const bandwidth = (over: Partial<MigrationPlanInput>, policy: MigrationPolicyInput = {}) =>
    planMigration(planInput(over, policy)).plan.parameters.bandwidthMiBps;
  assert.equal(bandwidth({}), undefined);
  assert.equal(bandwidth({}, { bandwidthMiBps: 64 }), 64);
  assert.equal(bandwidth({ mode: 'hybrid', linkBandwidthBytesPerSecond: GBIT }), 119);
  assert.equal(bandwidth({ mode: 'internet', linkBandwidthBytesPerSecond: 50 * MIB }, { bandwidthMiBps: 20 }), 20);
  // The cap is what the prediction assumes: 4 GiB at 64 MiB/s is 64 s for pass 0.
  const capped = planMigration(planInput({}, { bandwidthMiBps: 64 })).plan.prediction;
  assert.ok(capped.totalMs > 64_000 && capped.totalMs < 66_000 + MIGRATION_SETUP_MS, `${capped.totalMs}`);
});

test('the deadline scales with memory and has a one-minute floor', () => {
  assert.equal(migrationDeadlineMs({ memoryBytes: 256 * MIB, deadlineSecondsPerGiB: 150 }), 60_000);
  assert.equal(migrationDeadlineMs({ memoryBytes: 4 * GIB, deadlineSecondsPerGiB: 150 }), 600_000);
  assert.equal(migrationDeadlineMs({ memoryBytes: 512 * MIB, deadlineSecondsPerGiB: 150 }), 75_000);
  assert.equal(migrationDeadlineMs({ memoryBytes: 1.5 * GIB, deadlineSecondsPerGiB: 100 }), 150_000);
});
