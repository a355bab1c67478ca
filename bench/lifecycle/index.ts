/**
 * VM lifecycle benchmark: create→running latency through the vmCreate workflow (placement, fenced row, disk,
 * define, start, record, on a real host agent and libvirtd) against the same libvirt and qemu-img calls made
 * directly, interleaved in one run on one harness host so both see the same machine load. The ratio of the two
 * is the orchestration overhead.
 */
import { randomUUID } from 'node:crypto';
import { rm } from 'node:fs/promises';
import path from 'node:path';
import pino from 'pino';
import { buildDomainXml, detectDomainType, DiskImages, LibvirtConnection } from '../../native/libvirt';
import { assertHypervisorBinaries, startLocalHypervisors } from '../../native/libvirt/harness';
import {
  readResults,
  runLine,
  writeResults,
  type Benchmark,
  type BenchRunInput,
  type BenchRunOutput,
} from '../results';
import type { RunMetadata } from '../run-metadata';
import { withBenchServices } from '../services';
import { summarize, type Summary } from '../stats';
import { startHostAgent } from '../../workers/host-agent';
import type { VmCreateInput, VmCreateResult } from '../../workflows/vm-create';
import { vmSpecSchema } from '../../domain/vm-spec';

const ITERATIONS = Number(process.env.NOVACRON_BENCH_ITERATIONS ?? 15);
const MiB = 1024 * 1024;

async function run(input: BenchRunInput): Promise<BenchRunOutput> {
  assertHypervisorBinaries();
  return withBenchServices({ name: 'lifecycle' }, async ({ config: control, client, cleanups, scratchDir }) => {
    const hypervisors = await startLocalHypervisors({ count: 1, baseDir: scratchDir('hv') });
    cleanups.add(() => hypervisors.stop());
    const host = hypervisors.hosts[0]!;
    const imageRoot = scratchDir('images');
    const config = { ...control, agent: { ...control.agent, hostId: host.hostId, libvirtUri: host.uri, imageRoot } };
    const agent = await startHostAgent({ config, logger: pino({ level: 'silent' }) });
    cleanups.add(() => agent.shutdown());

    const conn = new LibvirtConnection({ uri: host.uri });
    const images = new DiskImages({ imageRoot });
    const domainType = detectDomainType();
    const spec = (name: string) =>
      vmSpecSchema.parse({
        name,
        vcpus: 1,
        memoryMib: 64,
        disks: [{ name: 'root', sizeMib: 16 }],
        hostId: host.hostId,
      });

    const orchestrated: number[] = [];
    const raw: number[] = [];
    const steps: Record<string, number[]> = {};
    // One warm-up of each, then interleave so drift in machine load hits both alike.
    for (let i = -1; i < ITERATIONS; i++) {
      const vm: VmCreateInput = { vmId: randomUUID(), spec: spec(`bench-wf-${i + 1}`) };
      let began = performance.now();
      const result = (await client.workflow.execute('vmCreate', {
        workflowId: `vm-create-${vm.vmId}`,
        taskQueue: config.temporal.taskQueue,
        args: [vm],
      })) as VmCreateResult;
      const workflowMs = performance.now() - began;
      await client.workflow.execute('vmDelete', {
        workflowId: `vm-delete-${vm.vmId}`,
        taskQueue: config.temporal.taskQueue,
        args: [{ vmId: vm.vmId }],
      });

      const rawId = randomUUID();
      const rawName = `bench-raw-${i + 1}`;
      const disk = path.join(imageRoot, rawId, 'root.qcow2');
      began = performance.now();
      await images.create({ path: disk, format: 'qcow2', sizeBytes: 16 * MiB });
      await conn.domainDefineXML({
        xml: buildDomainXml({
          name: rawName,
          uuid: rawId,
          vcpus: 1,
          memoryMiB: 64,
          disks: [{ path: disk, format: 'qcow2', target: 'vda' }],
          networks: [],
          metadata: { vmId: rawId },
          imageRoot,
          domainType,
        }),
      });
      await conn.domainCreate({ name: rawName });
      const rawMs = performance.now() - began;
      await conn.domainDestroy({ name: rawName });
      await conn.domainUndefine({ name: rawName });
      await rm(path.dirname(disk), { recursive: true, force: true });

      if (i < 0) continue;
      orchestrated.push(Math.round(workflowMs));
      raw.push(Math.round(rawMs));
      for (const step of result.steps) (steps[step.name] ??= []).push(step.durationMs ?? 0);
      process.stdout.write(
        `  ${i + 1}/${ITERATIONS}: workflow ${Math.round(workflowMs)} ms, raw ${Math.round(rawMs)} ms\n`,
      );
    }

    const workflow = summarize(orchestrated);
    const direct = summarize(raw);
    const results: Omit<LifecycleResults, 'run'> = {
      benchmark: 'lifecycle',
      domainType,
      iterations: ITERATIONS,
      guest: '1 vCPU, 64 MiB, one 16 MiB qcow2 disk, no network, no OS',
      createToRunningMs: {
        workflow,
        raw: direct,
        note: 'workflow: vmCreate start to result (place + fenced row, disk, define, start, record) via Temporal and a host agent; raw: qemu-img create + virsh define + virsh start from the same process',
      },
      workflowStepMs: Object.fromEntries(Object.entries(steps).map(([name, values]) => [name, summarize(values)])),
      overheadRatioP50: Number((workflow.p50 / direct.p50).toFixed(2)),
      overheadRatioP99: Number((workflow.p99 / direct.p99).toFixed(2)),
      overheadMsP50: workflow.p50 - direct.p50,
    };
    process.stdout.write(
      `  create→running p50: workflow ${workflow.p50} ms, raw ${direct.p50} ms (ratio ${results.overheadRatioP50})\n`,
    );
    const file = await writeResults({ dir: input.outDir, name: 'lifecycle.json', recorder: input.recorder, results });
    return { file, publish: true };
  });
}

interface LifecycleResults {
  run: RunMetadata;
  benchmark: 'lifecycle';
  domainType: string;
  iterations: number;
  guest: string;
  createToRunningMs: { workflow: Summary; raw: Summary; note: string };
  workflowStepMs: Record<string, Summary>;
  overheadRatioP50: number;
  overheadRatioP99: number;
  overheadMsP50: number;
}

function render(file: string, r: LifecycleResults): string {
  const { workflow, raw } = r.createToRunningMs;
  const steps = Object.entries(r.workflowStepMs).map(([name, s]) => `${name} ${s.p50} ms`);
  return [
    runLine({ file, run: r.run }),
    '',
    `Create→running of a tiny guest (${r.guest}) on one harness host (${r.domainType}), ${r.iterations} ` +
      'interleaved iterations after one warm-up: through `vmCreate` on a real host agent and libvirtd, against the ' +
      'same `qemu-img create`, `virsh define` and `virsh start` made directly from the benchmark process.',
    '',
    '| create→running | p50 | p90 | p99 | min | max |',
    '| --- | ---: | ---: | ---: | ---: | ---: |',
    ...(
      [
        ['through vmCreate', workflow],
        ['raw libvirt calls', raw],
      ] as const
    ).map(([what, s]) => `| ${what} | ${s.p50} ms | ${s.p90} ms | ${s.p99} ms | ${s.min} ms | ${s.max} ms |`),
    '',
    `Orchestration overhead (workflow p50 minus raw p50): ${r.overheadMsP50} ms; workflow / raw ${r.overheadRatioP50} ` +
      `at p50, ${r.overheadRatioP99} at p99 (a ratio under 1 means the load on the machine moved more than ` +
      `NovaCron adds). vmCreate step p50s: ${steps.join(', ')}; the rest of the workflow's time is task dispatch ` +
      'between steps.',
  ].join('\n');
}

export const lifecycleBenchmark: Benchmark = {
  name: 'lifecycle',
  run,
  publishedResults: async (outDir) => path.join(outDir, 'lifecycle.json'),
  sections: [
    {
      doc: 'docs/benchmarks.md',
      name: 'lifecycle',
      render: async (file) => render(file, await readResults<LifecycleResults>(file)),
    },
  ],
};
