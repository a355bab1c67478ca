import assert from 'node:assert/strict';
import { test } from 'node:test';

import { DomainTypeUnavailableError, detectDomainType, kvmSupport, resolveDomainType } from './domain-type';
import type { DomainTypeProbe } from './domain-type';

const CPUINFO_TCG_ONLY =
  'processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu vme de pse tsc msr pae sse sse2 ssse3 hypervisor\n\n' +
  'processor\t: 1\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu vme de pse tsc msr pae sse sse2 ssse3 hypervisor\n';
const CPUINFO_SVM = 'processor\t: 0\nflags\t\t: fpu vme svm npt\n';
const CPUINFO_VMX = 'processor\t: 0\nflags\t\t: fpu vme vmx ept\n';

function probe(input: { kvm: 'ok' | NodeJS.ErrnoException; cpuinfo: string }): DomainTypeProbe {
  return {
    openKvmDevice: () => {
      if (input.kvm !== 'ok') throw input.kvm;
    },
    readCpuinfo: () => input.cpuinfo,
  };
}

function errno(code: string): NodeJS.ErrnoException {
  return Object.assign(new Error(`${code}: /dev/kvm`), { code });
}

test('KVM needs both an openable /dev/kvm and vmx or svm among the CPU flags', () => {
  assert.equal(detectDomainType(probe({ kvm: 'ok', cpuinfo: CPUINFO_VMX })), 'kvm');
  assert.equal(detectDomainType(probe({ kvm: 'ok', cpuinfo: CPUINFO_SVM })), 'kvm');
  // This machine: /dev/kvm opens, but the CPU has no hardware virtualization.
  assert.equal(detectDomainType(probe({ kvm: 'ok', cpuinfo: CPUINFO_TCG_ONLY })), 'qemu');
  assert.equal(detectDomainType(probe({ kvm: errno('ENOENT'), cpuinfo: CPUINFO_VMX })), 'qemu');
  assert.equal(detectDomainType(probe({ kvm: errno('EACCES'), cpuinfo: CPUINFO_SVM })), 'qemu');
});

test('a flag word that merely contains vmx does not count', () => {
  assert.equal(detectDomainType(probe({ kvm: 'ok', cpuinfo: 'flags\t: fpu notvmx svmish\n' })), 'qemu');
});

test('kvmSupport says why KVM is out', () => {
  assert.deepEqual(kvmSupport(probe({ kvm: 'ok', cpuinfo: CPUINFO_VMX })), { ok: true });
  const noDevice = kvmSupport(probe({ kvm: errno('ENOENT'), cpuinfo: CPUINFO_VMX }));
  assert.equal(noDevice.ok, false);
  assert.match(!noDevice.ok ? noDevice.reason : '', /\/dev\/kvm does not open read-write \(ENOENT\)/);
  const noFlags = kvmSupport(probe({ kvm: 'ok', cpuinfo: CPUINFO_TCG_ONLY }));
  assert.match(!noFlags.ok ? noFlags.reason : '', /neither vmx .* nor svm/);
});

test('resolveDomainType: auto detects, qemu forces TCG, kvm insists and says why it cannot', () => {
  const kvmHost = probe({ kvm: 'ok', cpuinfo: CPUINFO_SVM });
  const tcgHost = probe({ kvm: 'ok', cpuinfo: CPUINFO_TCG_ONLY });
  assert.equal(resolveDomainType('auto', kvmHost), 'kvm');
  assert.equal(resolveDomainType('auto', tcgHost), 'qemu');
  assert.equal(resolveDomainType('qemu', kvmHost), 'qemu');
  assert.equal(resolveDomainType('kvm', kvmHost), 'kvm');
  assert.throws(
    () => resolveDomainType('kvm', tcgHost),
    (err: unknown) =>
      err instanceof DomainTypeUnavailableError && /agent\.domainType is kvm.*neither vmx/.test(err.message),
  );
  assert.throws(() => resolveDomainType('kvm', probe({ kvm: errno('EACCES'), cpuinfo: CPUINFO_VMX })), /EACCES/);
  assert.throws(() => resolveDomainType('xen' as never, kvmHost), DomainTypeUnavailableError);
});

test('qemu never probes the host', () => {
  const untouchable: DomainTypeProbe = {
    openKvmDevice: () => assert.fail('probed /dev/kvm'),
    readCpuinfo: () => assert.fail('read /proc/cpuinfo'),
  };
  assert.equal(resolveDomainType('qemu', untouchable), 'qemu');
});
