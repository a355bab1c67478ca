import assert from 'node:assert/strict';
import { test } from 'node:test';
import { migrationPolicySchema, type MigrationJobSample, type MigrationPolicyInput } from './migration';
import {
  AUTO_CONVERGE_GRACE_PASSES,
  boundaryRemainingBytes,
  createConvergenceState,
  migrationEtaMs,
  observeJobSample,
  progressFromSample,
  type ConvergenceAction,
  type ConvergenceState,
} from './migration-convergence';
import { planMigration } from './migration-plan';

const MIB = 1024 * 1024;
const GIB = 1024 * MIB;
const START = 1_000_000;

function start(policyInput: MigrationPolicyInput = {}): ConvergenceState {
  const policy = migrationPolicySchema.parse(policyInput);
  const { plan } = planMigration({
    memoryBytes: 4 * GIB,
    dirtyRateBytesPerSecond: 90 * MIB,
    linkBandwidthBytesPerSecond: 100 * MIB,
    linkRttMs: 1,
    mode: 'hybrid',
    policy,
  });
  return createConvergenceState({ plan, policy, startedAtMs: START });
}

function job(pass: number, remainingMiB: number, over: Partial<MigrationJobSample> = {}): MigrationJobSample {
  return {
    state: 'running',
    phase: 'precopy',
    timeElapsedMs: 0,
    dataTotalBytes: 4 * GIB,
    dataProcessedBytes: 4 * GIB - remainingMiB * MIB,
    dataRemainingBytes: remainingMiB * MIB,
    memoryDirtyRateBytesPerSecond: 90 * MIB,
    pass,
    memoryBytesPerSecond: 100 * MIB,
    ...over,
  };
}

interface Run {
  state: ConvergenceState;
  actions: ConvergenceAction[];
  /** Each action with the pass whose sample produced it. */
  log: string[];
}

/** Feeds samples 5 s apart, as the workflow's poll would. */
function feed(state: ConvergenceState, samples: MigrationJobSample[], firstAtMs = START + 5000): Run {
  const actions: ConvergenceAction[] = [];
  const log: string[] = [];
  samples.forEach((sample, i) => {
    const step = observeJobSample(state, { sample, nowMs: firstAtMs + i * 5000 });
    state = step.state;
    actions.push(...step.actions);
    for (const action of step.actions) log.push(`${sample.pass}:${action.kind}`);
  });
  return { state, actions, log };
}

/** A job that gains for three passes, then stays at 800 MiB with QEMU's throttle rising from the given pass. */
function plateau(passes: number, throttleFrom = Infinity): MigrationJobSample[] {
  const samples = [job(1, 4096), job(2, 1500), job(3, 900)];
  for (let pass = 4; pass < 4 + passes; pass++) {
    const throttle = pass < throttleFrom ? 0 : Math.min(99, 20 + 10 * (pass - throttleFrom));
    samples.push(job(pass, 800 + (pass % 3) * 5, { autoConvergeThrottlePercent: throttle }));
  }
  return samples;
}

test('a plateau raises the downtime in steps, records the throttle, then starts post-copy', () => {
  const run = feed(start({ allowPostCopy: true }), plateau(40, 12));
  assert.deepEqual(run.log, ['6:set-downtime', '8:set-downtime', '10:set-downtime', '12:record', '24:start-post-copy']);
  const downtimes = run.actions.flatMap((a) => (a.kind === 'set-downtime' ? [a.downtimeMs] : []));
  assert.deepEqual(downtimes, [600, 1200, 2000]);
  const steps = run.state.escalations;
  assert.deepEqual(
    steps.map((s) => [s.seq, s.kind, s.value]),
    [
      [1, 'raise-downtime', 600],
      [2, 'raise-downtime', 1200],
      [3, 'raise-downtime', 2000],
      [4, 'auto-converge', 20],
      [5, 'post-copy', undefined],
    ],
  );
  assert.deepEqual(
    run.actions.map((a) => a.escalation),
    steps,
  );
  assert.ok(steps.every((s, i) => i === 0 || s.atMs > steps[i - 1]!.atMs));
  assert.match(steps[0]!.reason, /800 MiB left at pass 6 \(best 800 MiB\), no 4 % gain for 2 passes/);
  assert.match(steps[0]!.reason, /300 ms downtime lets 30 MiB through at 100 MiB\/s.*300 → 600 ms/);
  assert.equal(steps[0]!.dataRemainingBytes, 800 * MIB);
  assert.match(steps[3]!.reason, /throttles the guest's vCPUs to 20 %/);
  assert.match(steps[4]!.reason, /2000 ms ceiling, with the guest throttled to 99 %.*switching to post-copy/);
  assert.equal(run.state.stage, 'post-copy');
  assert.equal(run.state.downtimeMs, 2000);
});

test('the throttle counts as progress while it rises, for stallPasses plus the grace after it stops', () => {
  // The plateau starts after pass 4, the ladder reaches the ceiling at pass 10 and hands over at pass 12, as the
  // throttle appears; it rises to 99 % by pass 20, and from there the count runs to stallPasses + grace.
  const run = feed(start({ allowPostCopy: true }), plateau(40, 12));
  const postCopy = run.state.escalations.find((s) => s.kind === 'post-copy')!;
  assert.equal(postCopy.pass, 20 + 2 + AUTO_CONVERGE_GRACE_PASSES);
});

test('without post-copy the ladder ends in an abort that says what the policy allows', () => {
  const withAuto = feed(start(), plateau(40, 12));
  assert.deepEqual(
    withAuto.state.escalations.map((s) => s.kind),
    ['raise-downtime', 'raise-downtime', 'raise-downtime', 'auto-converge', 'abort'],
  );
  assert.match(withAuto.state.escalations[4]!.reason, /the policy allows no post-copy/);
  assert.equal(withAuto.actions.at(-1)!.kind, 'abort');

  // Without auto-converge the step after the ceiling is the abort, and no throttle is waited for.
  const bare = feed(start({ allowAutoConverge: false }), plateau(40));
  assert.deepEqual(bare.log, ['6:set-downtime', '8:set-downtime', '10:set-downtime', '12:abort']);
  assert.match(bare.state.escalations[3]!.reason, /allows neither auto-converge nor post-copy/);
  assert.equal(bare.state.stage, 'aborted');
  assert.deepEqual(feed(bare.state, plateau(5)).actions, [], 'nothing after an abort');
});

test('a saw-tooth that still progresses from pass to pass never escalates (the Nova lesson)', () => {
  const samples: MigrationJobSample[] = [];
  let atPassStart = 4096;
  for (let pass = 1; pass <= 25; pass++) {
    // Within a pass the remainder falls as pages go out, then jumps back up at the next sync; a sample can even be
    // higher than the one before it inside the pass (libvirt's figures lag).
    for (const fraction of [1, 0.6, 0.7, 0.1]) samples.push(job(pass, atPassStart * fraction));
    atPassStart *= 0.94;
  }
  const run = feed(start({ stallPasses: 1 }), samples);
  assert.deepEqual(run.actions, []);
  assert.equal(run.state.pass, 25);
  assert.equal(run.state.passesWithoutGain, 0);
  // The same figures read sample by sample rise at every pass start: a detector on them would have stalled.
  const rises = samples.filter((s, i) => i > 0 && s.dataRemainingBytes > samples[i - 1]!.dataRemainingBytes).length;
  assert.ok(rises >= 25, `${rises}`);
});

test('creeping by less than the gain fraction a pass is a stall, and passes skipped between samples count', () => {
  const creep = feed(start(), [job(1, 4096), job(2, 1000), job(3, 980), job(4, 961)]);
  assert.deepEqual(creep.log, ['4:set-downtime']);
  const skipped = feed(start(), [job(1, 4096), job(2, 1000), job(5, 1000)]);
  assert.deepEqual(skipped.log, ['5:set-downtime']);
});

test('without post-copy the deadline aborts whatever the stage, but never a migration in post-copy', () => {
  const state = start();
  assert.equal(state.deadlineMs, 600_000);
  const late = START + 600_000;
  const early = observeJobSample(state, { sample: job(1, 4096), nowMs: START + 1000 });
  assert.deepEqual(early.actions, []);
  const aborted = observeJobSample(early.state, { sample: job(2, 1200), nowMs: late });
  assert.equal(aborted.actions.length, 1);
  assert.equal(aborted.actions[0]!.kind, 'abort');
  assert.match(aborted.actions[0]!.escalation.reason, /600 s completion deadline passed \(600 s since the start\)/);
  assert.match(aborted.actions[0]!.escalation.reason, /1200 MiB left at pass 2/);
  assert.equal(aborted.actions[0]!.escalation.seq, 1);
  assert.deepEqual(observeJobSample(aborted.state, { sample: job(3, 900), nowMs: late + 5000 }).actions, []);

  const inPostCopy = observeJobSample(early.state, { sample: job(9, 500, { phase: 'postcopy' }), nowMs: late });
  assert.deepEqual(inPostCopy.actions, []);
  assert.equal(inPostCopy.state.stage, 'post-copy');
  assert.deepEqual(observeJobSample(inPostCopy.state, { sample: job(9, 400), nowMs: late + 60_000 }).actions, []);

  const requested = feed(start({ allowPostCopy: true }), plateau(40, 12));
  assert.equal(requested.state.stage, 'post-copy');
  assert.deepEqual(observeJobSample(requested.state, { sample: job(50, 300), nowMs: late * 2 }).actions, []);
});

test('with post-copy armed the deadline switches to post-copy, even while a rising throttle holds the ladder', () => {
  // A plateau from pass 4 with QEMU's throttle rising every other pass, by 2 points, still rising when the 600 s
  // deadline comes at pass 30: the ladder reaches the ceiling, and auto-converge then never runs out of passes.
  const samples = [job(1, 4096), job(2, 1500), job(3, 900)];
  for (let pass = 4; pass <= 30; pass++) {
    samples.push(job(pass, 800, { autoConvergeThrottlePercent: 20 + 2 * Math.floor((pass - 4) / 2) }));
  }
  const run = feed(start({ allowPostCopy: true }), samples, START + 600_000 - 29 * 5000);
  assert.deepEqual(run.log, ['4:record', '6:set-downtime', '8:set-downtime', '10:set-downtime', '30:start-post-copy']);
  const last = run.state.escalations.at(-1)!;
  assert.equal(last.kind, 'post-copy');
  assert.match(last.reason, /600 s completion deadline passed \(600 s since the start\).*; switching to post-copy$/);
  assert.equal(run.state.stage, 'post-copy');
  assert.deepEqual(observeJobSample(run.state, { sample: job(31, 700), nowMs: START + 700_000 }).actions, []);
});

test('the setup sample at pass 0, with nothing remaining yet, is no boundary: pass 1 is the first one judged', () => {
  // Seen on libvirt: the job's first sample says pass 0 and 0 bytes left. Judged, it set the best remainder to 0,
  // and every later pass was a stall against it, from pass 1 on.
  const samples = [job(0, 0, { dataTotalBytes: 0, dataProcessedBytes: 0 }), job(1, 247), job(2, 30), job(3, 30)];
  const run = feed(start({ stallPasses: 1 }), samples);
  assert.deepEqual(run.log, ['3:set-downtime']);
  assert.match(run.state.escalations[0]!.reason, /^30 MiB left at pass 3 \(best 30 MiB\), no 4 % gain for 1 passes/);
  assert.equal(run.state.bestRemainingBytes, 30 * MIB);
});

test('a throttle seen early is recorded once, in order, and the ladder numbers after it', () => {
  const run = feed(start({ allowPostCopy: true }), plateau(40, 5));
  assert.deepEqual(
    run.state.escalations.map((s) => `${s.seq}:${s.kind}@${s.pass}`),
    ['1:auto-converge@5', '2:raise-downtime@6', '3:raise-downtime@8', '4:raise-downtime@10', '5:post-copy@17'],
  );
  assert.equal(run.actions.filter((a) => a.kind === 'record').length, 1);
});

test('samples of a job that is not running, or of a pass already judged, change nothing', () => {
  const state = observeJobSample(start(), { sample: job(3, 900), nowMs: START + 1000 }).state;
  for (const sample of [job(4, 900, { state: 'completed' }), job(4, 900, { state: 'failed' }), job(2, 900)]) {
    const step = observeJobSample(state, { sample, nowMs: START + 2000 });
    assert.deepEqual(step, { state, actions: [] });
  }
  // Another sample of the judged pass is remembered for the next boundary's reconstruction, and judges nothing.
  const again = observeJobSample(state, { sample: job(3, 5000), nowMs: START + 2000 });
  assert.deepEqual(again.actions, []);
  assert.deepEqual(again.state, {
    ...state,
    lastSeen: { pass: 3, processedBytes: 4 * GIB - 5000 * MIB, remainingBytes: 5000 * MIB },
  });
});

test('a sample late in its pass is judged by the remainder its pass began with, not by what is left of it', () => {
  // Every pass begins with 30 MiB (the guest rewrites its working set) and sends 8 MiB/s; the poll lands 1 to 3.5 s
  // into each pass. Read as they are, the late samples looked like gains and one set a 2 MiB best no boundary meets.
  let processed = 128 * MIB;
  const samples: MigrationJobSample[] = [];
  const lateBy = [1, 3.5, 1, 3, 1.5, 3.5, 1, 2];
  lateBy.forEach((seconds, i) => {
    const sent = seconds * 8 * MIB;
    // The previous pass sent what it had left, then this one sent `sent` before the sample.
    processed += sent;
    samples.push(job(3 + i, 30 - sent / MIB, { dataProcessedBytes: processed }));
    processed += 30 * MIB - sent;
  });
  assert.deepEqual(
    samples.map((s) => s.dataRemainingBytes / MIB),
    [22, 2, 22, 6, 18, 2, 22, 14],
  );
  const run = feed(start({ stallPasses: 2, downtimeCeilingMs: 600, allowAutoConverge: false }), samples);
  // Pass 3 is the first boundary, read as sampled (22 MiB: no sample before it); 4 and 5 began with 30 MiB, no gain:
  // a raise at 5, to the ceiling, and the abort two passes later. Read as sampled, 4's 2 MiB was a gain.
  assert.deepEqual(run.log, ['5:set-downtime', '7:abort']);
  assert.equal(run.state.bestRemainingBytes, 22 * MIB);
  assert.equal(run.state.escalations[0]!.dataRemainingBytes, 30 * MIB);
  assert.equal(boundaryRemainingBytes(undefined, samples[1]!), 2 * MIB, 'nothing to go on: as sampled');
});

test('the ETA follows the net rate in pre-copy and the plain rate in post-copy', () => {
  const sample = job(3, 1000, { memoryBytesPerSecond: 100 * MIB, memoryDirtyRateBytesPerSecond: 50 * MIB });
  assert.equal(migrationEtaMs({ sample }), 20_000);
  assert.equal(migrationEtaMs({ sample, recentThroughputBytesPerSecond: 150 * MIB }), 10_000);
  assert.equal(migrationEtaMs({ sample: { ...sample, phase: 'postcopy' } }), 10_000);
  assert.equal(migrationEtaMs({ sample: { ...sample, memoryDirtyRateBytesPerSecond: 100 * MIB } }), undefined);
  assert.equal(migrationEtaMs({ sample: { ...sample, memoryBytesPerSecond: 0 } }), undefined);
  assert.equal(migrationEtaMs({ sample: { ...sample, state: 'completed' } }), 0);
  assert.equal(migrationEtaMs({ sample: { ...sample, state: 'failed' } }), undefined);
});

test('progress carries the sample figures and the ETA, and leaves the ETA out when there is none', () => {
  const sample = job(3, 1000, { memoryBytesPerSecond: 100 * MIB, memoryDirtyRateBytesPerSecond: 50 * MIB });
  assert.deepEqual(progressFromSample({ sample }), {
    dataTotalBytes: 4 * GIB,
    dataProcessedBytes: 3096 * MIB,
    dataRemainingBytes: 1000 * MIB,
    dirtyRateBytesPerSecond: 50 * MIB,
    pass: 3,
    throughputBytesPerSecond: 100 * MIB,
    etaMs: 20_000,
  });
  const stuck = progressFromSample({ sample, recentThroughputBytesPerSecond: 40 * MIB });
  assert.equal(stuck.throughputBytesPerSecond, 40 * MIB);
  assert.equal('etaMs' in stuck, false);
});
