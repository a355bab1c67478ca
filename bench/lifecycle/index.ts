/**
 * VM lifecycle benchmark: create→running latency through the vmCreate workflow (placement, fenced row, disk,
 * define, start, record, on a real host agent and libvirtd) against the same libvirt and qemu-img calls made
 * directly, interleaved in one run on one harness host so both see the same machine load. The ratio of the two
 * is the orchestration overhead.
 */
import { Client, Connection } from '@temporalio/client';
import { randomUUID } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { loadConfig } from '../../config/load-config';
import { buildDomainXml, detectDomainType, DiskImages, LibvirtConnection } from '../../native/libvirt';
import { assertHypervisorBinaries, startLocalHypervisors } from '../../native/libvirt/harness';
import { startTemporalDevServer } from '../../native/temporal';
import { startEmbeddedPostgres } from '../../store/embedded-postgres';
import { freePort } from '../../test/support/ports';
import { summarize } from '../stats';
import { startControlWorker } from '../../workers/control-worker';
import { startHostAgent } from '../../workers/host-agent';
import type { VmCreateInput, VmCreateResult } from '../../workflows/vm-create';
import { vmSpecSchema } from '../../domain/vm-spec';

const ITERATIONS = Number(process.env.NOVACRON_BENCH_ITERATIONS ?? 15);
const MiB = 1024 * 1024;

export async function runBench(input: { outDir: string }): Promise<string> {
  assertHypervisorBinaries();
  const scratch = mkdtempSync(path.join(os.tmpdir(), 'novacron-bench-lifecycle-'));
  const cleanups: Array<() => Promise<void>> = [];
  try {
    const pg = await startEmbeddedPostgres({ dataDir: path.join(scratch, 'pg'), port: await freePort() });
    cleanups.push(() => pg.stop());
    const temporal = await startTemporalDevServer({ port: 0 });
    cleanups.push(() => temporal.stop());
    const hypervisors = await startLocalHypervisors({ count: 1, baseDir: path.join(scratch, 'hv') });
    cleanups.push(() => hypervisors.stop());
    const host = hypervisors.hosts[0]!;
    const imageRoot = path.join(scratch, 'images');
    const config = loadConfig({
      env: {},
      overrides: {
        system: { dataDir: path.join(scratch, 'data'), logLevel: 'silent' },
        temporal: { address: temporal.address, taskQueue: 'bench-lifecycle' },
        storage: { databaseUrl: pg.databaseUrl },
        monitoring: { workerMetricsPort: 0 },
        agent: { hostId: host.hostId, libvirtUri: host.uri, imageRoot },
      },
    });
    const worker = await startControlWorker({ config, logger: pino({ level: 'silent' }) });
    cleanups.push(() => worker.shutdown());
    const agent = await startHostAgent({ config, logger: pino({ level: 'silent' }) });
    cleanups.push(() => agent.shutdown());
    const connection = await Connection.connect({ address: temporal.address });
    cleanups.push(() => connection.close());
    const client = new Client({ connection });

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
    const result = {
      benchmark: 'lifecycle',
      at: new Date().toISOString(),
      machine: {
        cpus: os.availableParallelism(),
        memoryGiB: Math.round(os.totalmem() / 2 ** 30),
        node: process.version,
      },
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
      rerun: 'npm run bench -- lifecycle',
    };
    process.stdout.write(
      `  create→running p50: workflow ${workflow.p50} ms, raw ${direct.p50} ms (ratio ${result.overheadRatioP50})\n`,
    );
    mkdirSync(input.outDir, { recursive: true });
    const file = path.join(input.outDir, 'lifecycle.json');
    writeFileSync(file, `${JSON.stringify(result, null, 2)}\n`);
    return file;
  } finally {
    for (const cleanup of cleanups.reverse()) await cleanup().catch(() => undefined);
    rmSync(scratch, { recursive: true, force: true });
  }
}
