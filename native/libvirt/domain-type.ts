/**
 * Which `<domain type>` this host can run: KVM needs both an openable /dev/kvm and a CPU with hardware
 * virtualization. The device alone is not enough: seen here, /dev/kvm exists on a CPU without VMX or SVM, and a KVM
 * guest then dies in SeaBIOS with "KVM internal error ... emulation failure".
 */
import { closeSync, openSync, readFileSync } from 'node:fs';

/** libvirt's `<domain type>`: hardware virtualization, or QEMU's TCG emulator where KVM is unavailable. */
export const DomainType = { kvm: 'kvm', qemu: 'qemu' } as const;
export type DomainType = (typeof DomainType)[keyof typeof DomainType];

/** config `agent.domainType`: `auto` detects, the others force. */
export type DomainTypeSetting = 'auto' | DomainType;

/** What detection reads from the host; injected in tests. Each throws (or returns text) as the real call would. */
export interface DomainTypeProbe {
  /** Opens /dev/kvm for reading and writing and closes it again; throws when it cannot. */
  openKvmDevice(): void;
  /** The text of /proc/cpuinfo. */
  readCpuinfo(): string;
}

export const hostDomainTypeProbe: DomainTypeProbe = {
  openKvmDevice: () => closeSync(openSync('/dev/kvm', 'r+')),
  readCpuinfo: () => readFileSync('/proc/cpuinfo', 'utf8'),
};

export type KvmSupport = { ok: true } | { ok: false; reason: string };

/** `agent.domainType: kvm` on a host that cannot run KVM guests. */
export class DomainTypeUnavailableError extends Error {
  override readonly name = 'DomainTypeUnavailableError';
}

/** Whether KVM guests can run here, and if not, why, in words an operator can act on. */
export function kvmSupport(probe: DomainTypeProbe = hostDomainTypeProbe): KvmSupport {
  try {
    probe.openKvmDevice();
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
    return { ok: false, reason: `/dev/kvm does not open read-write (${code})` };
  }
  let cpuinfo: string;
  try {
    cpuinfo = probe.readCpuinfo();
  } catch (err) {
    return { ok: false, reason: `/proc/cpuinfo is unreadable (${(err as Error).message})` };
  }
  const flags = new Set(
    cpuinfo
      .split('\n')
      .filter((line) => /^flags\s*:/.test(line))
      .flatMap((line) =>
        line
          .slice(line.indexOf(':') + 1)
          .trim()
          .split(/\s+/),
      ),
  );
  if (!flags.has('vmx') && !flags.has('svm')) {
    return { ok: false, reason: 'the CPU flags in /proc/cpuinfo have neither vmx (Intel VT-x) nor svm (AMD-V)' };
  }
  return { ok: true };
}

/** KVM when `kvmSupport` says so, TCG (`qemu`) otherwise. */
export function detectDomainType(probe: DomainTypeProbe = hostDomainTypeProbe): DomainType {
  return kvmSupport(probe).ok ? DomainType.kvm : DomainType.qemu;
}

/** The domain type for config `agent.domainType`; `kvm` on a host without KVM throws, saying why. */
export function resolveDomainType(
  setting: DomainTypeSetting,
  probe: DomainTypeProbe = hostDomainTypeProbe,
): DomainType {
  if (setting === DomainType.qemu) return DomainType.qemu;
  if (setting !== DomainType.kvm && setting !== 'auto') {
    throw new DomainTypeUnavailableError(`agent.domainType ${JSON.stringify(setting)} is not auto, kvm or qemu`);
  }
  const support = kvmSupport(probe);
  if (support.ok) return DomainType.kvm;
  if (setting === DomainType.kvm) {
    throw new DomainTypeUnavailableError(`agent.domainType is kvm, but this host cannot run KVM: ${support.reason}`);
  }
  return DomainType.qemu;
}
