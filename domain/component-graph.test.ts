import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { ComponentGraphError, planBoot, type ClusterComponent } from './component-graph';
import { CLUSTER_COMPONENTS } from '../workflows/cluster-components';

const component = (name: string, phase: ClusterComponent['phase'], dependsOn: string[] = []): ClusterComponent => ({
  name,
  phase,
  dependsOn,
  critical: true,
  check: `check-${name}`,
});

describe('planBoot', () => {
  test('sorts components into phase-local levels; independent ones share a level', () => {
    const plan = planBoot([
      component('a', 'pre-init'),
      component('b', 'pre-init'),
      component('c', 'pre-init', ['a', 'b']),
      component('d', 'core', ['c']),
      component('e', 'core', ['d']),
      component('f', 'core', ['a']),
    ]);
    const names = (phase: string) =>
      plan.phases.find((p) => p.phase === phase)!.levels.map((level) => level.map((c) => c.name).sort());
    assert.deepEqual(names('pre-init'), [['a', 'b'], ['c']]);
    // Dependencies on an earlier phase are met by phase order, so d and f start the core phase together.
    assert.deepEqual(names('core'), [['d', 'f'], ['e']]);
    assert.deepEqual(names('services'), []);
  });

  test('rejects a cycle and names it', () => {
    assert.throws(
      () => planBoot([component('a', 'core', ['c']), component('b', 'core', ['a']), component('c', 'core', ['b'])]),
      (err: unknown) => err instanceof ComponentGraphError && /dependency cycle: a -> c -> b -> a/.test(err.message),
    );
  });

  test('rejects a self dependency', () => {
    assert.throws(() => planBoot([component('a', 'core', ['a'])]), /dependency cycle: a -> a/);
  });

  test('rejects an unknown dependency', () => {
    assert.throws(() => planBoot([component('a', 'core', ['ghost'])]), /"a" depends on unknown "ghost"/);
  });

  test('rejects a dependency on a later phase', () => {
    assert.throws(
      () => planBoot([component('a', 'pre-init', ['b']), component('b', 'services')]),
      /"a" \(pre-init\) depends on "b" from the later phase services/,
    );
  });

  test('rejects duplicate names', () => {
    assert.throws(() => planBoot([component('a', 'core'), component('a', 'core')]), /registered twice/);
  });

  test('the shipped component set is a valid graph covering all four phases', () => {
    const plan = planBoot(CLUSTER_COMPONENTS);
    assert.deepEqual(
      plan.phases.map((p) => [p.phase, p.levels.length > 0]),
      [
        ['pre-init', true],
        ['core', true],
        ['services', true],
        ['post-init', true],
      ],
    );
    assert.ok(plan.phases[0]!.levels[0]!.length >= 2, 'pre-init starts with parallel checks');
  });
});
