/**
 * The benchmark's test guest: started through the API on the shared pool, watched through the heartbeat in the
 * console log of the host it runs on, and replaced by a fresh one of the same spec when a migration left it dead.
 * Seen here: the memory-busy guest's kernel panics ("Fatal exception in interrupt") after a few live migrations of
 * QEMU 7.2 under TCG, with libvirt's defaults as with NovaCron's parameters; the idle guest does not. A sample on a
 * dead guest would measure a guest that no longer dirties memory, so each migration is followed by this check.
 */
import { readFile } from 'node:fs/promises';
import { vmConsoleLogPath } from '../../activities/storage-paths';
import { TESTGUEST_NAME } from '../../guest/build';
import { parseConsoleLog, testGuestOemStrings } from '../../guest/workload';
import { FLEET_SHARED_POOL, type Fleet } from '../../test/support/fleet';
import { domainHost, migrateWithDefaults, storeHost, type BenchVm } from './measure';
import type { GuestLoad } from './render';

export interface GuestSpec {
  vcpus: number;
  memoryMib: number;
  workingSetMiB: number;
}

/** One load's guest; `vm` changes when a dead guest is replaced. */
export interface BenchGuest {
  load: GuestLoad;
  dirtyMiBps: number;
  spec: GuestSpec;
  vm: BenchVm;
  /** Guests started for this load so far, the first included. */
  started: number;
}

// Generous for a loaded 2-core TCG machine: a live guest prints a heartbeat every second of its own time.
const BOOT_TIMEOUT_MS = 300_000;
const ALIVE_TIMEOUT_MS = 120_000;
const POLL_MS = 250;
const PANIC = /Kernel panic[^\r\n]*/;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export type GuestState = { alive: true } | { alive: false; detail: string };

/** Two more heartbeats in the console log of the host the guest runs on, or why not (a panic is told at once). */
export async function guestState(fleet: Fleet, vm: BenchVm, timeoutMs = ALIVE_TIMEOUT_MS): Promise<GuestState> {
  const hostId = await domainHost(fleet, vm);
  const file = vmConsoleLogPath({ imageRoot: fleet.imageRoots[hostId]!, vmId: vm.id });
  const read = () => readFile(file, 'utf8').catch(() => '');
  const seen = parseConsoleLog(await read()).heartbeats.length;
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const text = await read();
    const panic = PANIC.exec(text)?.[0];
    if (panic) return { alive: false, detail: `${panic.trim()} (on ${hostId})` };
    if (parseConsoleLog(text).heartbeats.length >= seen + 2) return { alive: true };
    if (performance.now() > deadline) {
      const info = await fleet.libvirt[hostId]!.domainGetInfo({ name: vm.name }).catch((e: unknown) => String(e));
      return { alive: false, detail: `no heartbeat for ${timeoutMs} ms on ${hostId}: ${JSON.stringify(info)}` };
    }
    await sleep(POLL_MS);
  }
}

const BOOT_ATTEMPTS = 3;

/**
 * A fresh guest on host-1, booted to its workload. A boot can panic on a loaded machine under TCG (Linux's timer
 * check, "IO-APIC + timer doesn't work!", fails when the vCPU is starved): that guest is deleted and another tried.
 */
async function createGuest(fleet: Fleet, guest: Omit<BenchGuest, 'vm'>): Promise<BenchVm> {
  for (let attempt = 1; ; attempt++) {
    const name = `mig-bench-${guest.load}-${guest.started}${attempt > 1 ? `-boot${attempt}` : ''}`;
    const created = await fleet.createVm({
      name,
      vcpus: guest.spec.vcpus,
      memoryMib: guest.spec.memoryMib,
      image: TESTGUEST_NAME,
      storagePool: FLEET_SHARED_POOL,
      hostId: 'host-1',
      oemStrings: testGuestOemStrings({ dirtyMiBps: guest.dirtyMiBps, workingSetMiB: guest.spec.workingSetMiB }),
    });
    await fleet.waitForWorkflow(created.workflowId, BOOT_TIMEOUT_MS);
    const vm = { id: created.vmId, name };
    const state = await guestState(fleet, vm, BOOT_TIMEOUT_MS);
    if (state.alive) return vm;
    process.stdout.write(`  ${name} did not start its workload: ${state.detail}\n`);
    await fleet.waitForWorkflow((await fleet.operate(vm.id, 'delete')).workflowId);
    if (attempt >= BOOT_ATTEMPTS)
      throw new Error(`${BOOT_ATTEMPTS} guests did not start their workload: ${state.detail}`);
  }
}

export async function startGuest(
  fleet: Fleet,
  input: { load: GuestLoad; dirtyMiBps: number; spec: GuestSpec },
): Promise<BenchGuest> {
  const guest = { ...input, started: 1 };
  return { ...guest, vm: await createGuest(fleet, guest) };
}

/** Deletes the guest through the API (from where the store has it: a copy elsewhere is brought back first). */
export async function deleteGuest(fleet: Fleet, guest: BenchGuest, deadlineMs: number): Promise<void> {
  const [actual, recorded] = await Promise.all([domainHost(fleet, guest.vm), storeHost(fleet, guest.vm)]);
  if (actual !== recorded) {
    const back = await migrateWithDefaults(fleet, guest.vm, {
      from: actual,
      to: recorded,
      ownerHostId: recorded,
      deadlineMs,
    });
    if (back.outcome !== 'completed') throw new Error(`${guest.vm.name} could not be brought back: ${back.reason}`);
  }
  await fleet.waitForWorkflow((await fleet.operate(guest.vm.id, 'delete')).workflowId);
}

export async function replaceGuest(fleet: Fleet, guest: BenchGuest, deadlineMs: number): Promise<void> {
  await deleteGuest(fleet, guest, deadlineMs);
  guest.started += 1;
  guest.vm = await createGuest(fleet, guest);
}
