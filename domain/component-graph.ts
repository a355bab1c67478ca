/**
 * The cluster boot plan: components with dependencies, sorted into phases and topological levels. Pure code, so it
 * runs inside the workflow sandbox and in unit tests alike.
 */

export const BOOT_PHASES = ['pre-init', 'core', 'services', 'post-init'] as const;
export type BootPhase = (typeof BOOT_PHASES)[number];

export interface ComponentRetryPolicy {
  maximumAttempts: number;
  initialIntervalMs: number;
  backoffCoefficient: number;
  maximumIntervalMs: number;
}

export interface ClusterComponent<Check extends string = string> {
  name: string;
  phase: BootPhase;
  dependsOn: readonly string[];
  /** A critical failure stops the boot; an optional one degrades it. */
  critical: boolean;
  /** The activity that checks this component. */
  check: Check;
  /** Overrides the boot-wide retry policy. */
  retry?: Partial<ComponentRetryPolicy>;
}

export interface PlannedComponent<Check extends string = string> extends ClusterComponent<Check> {
  /** Index of the parallel level inside its phase. */
  level: number;
}

export interface BootPlan<Check extends string = string> {
  phases: Array<{ phase: BootPhase; levels: Array<Array<PlannedComponent<Check>>> }>;
  components: Array<PlannedComponent<Check>>;
}

export class ComponentGraphError extends Error {
  override readonly name = 'ComponentGraphError';
}

function findCycle(components: readonly ClusterComponent[]): string[] | undefined {
  const byName = new Map(components.map((c) => [c.name, c]));
  const state = new Map<string, 'visiting' | 'done'>();
  const stack: string[] = [];
  const visit = (name: string): string[] | undefined => {
    if (state.get(name) === 'done') return undefined;
    if (state.get(name) === 'visiting') return [...stack.slice(stack.indexOf(name)), name];
    state.set(name, 'visiting');
    stack.push(name);
    for (const dep of byName.get(name)?.dependsOn ?? []) {
      const cycle = visit(dep);
      if (cycle) return cycle;
    }
    stack.pop();
    state.set(name, 'done');
    return undefined;
  };
  for (const component of components) {
    const cycle = visit(component.name);
    if (cycle) return cycle;
  }
  return undefined;
}

/** Validates the graph and sorts it; throws ComponentGraphError naming the offending component or cycle. */
export function planBoot<Check extends string>(components: ReadonlyArray<ClusterComponent<Check>>): BootPlan<Check> {
  const byName = new Map<string, ClusterComponent<Check>>();
  for (const component of components) {
    if (byName.has(component.name)) throw new ComponentGraphError(`component "${component.name}" is registered twice`);
    byName.set(component.name, component);
  }
  for (const component of components) {
    for (const dep of component.dependsOn) {
      const target = byName.get(dep);
      if (!target) throw new ComponentGraphError(`component "${component.name}" depends on unknown "${dep}"`);
      if (BOOT_PHASES.indexOf(target.phase) > BOOT_PHASES.indexOf(component.phase)) {
        throw new ComponentGraphError(
          `component "${component.name}" (${component.phase}) depends on "${dep}" from the later phase ${target.phase}`,
        );
      }
    }
  }
  const cycle = findCycle(components);
  if (cycle) throw new ComponentGraphError(`dependency cycle: ${cycle.join(' -> ')}`);

  const levelOf = new Map<string, number>();
  const levelFor = (component: ClusterComponent<Check>): number => {
    const known = levelOf.get(component.name);
    if (known !== undefined) return known;
    const samePhaseDeps = component.dependsOn
      .map((dep) => byName.get(dep)!)
      .filter((dep) => dep.phase === component.phase);
    const level = samePhaseDeps.length === 0 ? 0 : 1 + Math.max(...samePhaseDeps.map(levelFor));
    levelOf.set(component.name, level);
    return level;
  };

  const planned = components.map((c) => ({ ...c, level: levelFor(c) }));
  const phases = BOOT_PHASES.map((phase) => {
    const inPhase = planned.filter((c) => c.phase === phase);
    const depth = inPhase.length === 0 ? 0 : Math.max(...inPhase.map((c) => c.level)) + 1;
    const levels = Array.from({ length: depth }, (_, level) => inPhase.filter((c) => c.level === level));
    return { phase, levels };
  });
  return { phases, components: planned };
}
