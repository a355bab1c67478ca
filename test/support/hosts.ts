/** A host registration for tests that need hosts in the store but no agent: what a small agent would register. */
import type { HostRegistration } from '../../store/hosts';

export function testHost(id: string, overrides: Partial<HostRegistration> = {}): HostRegistration {
  return {
    id,
    address: '127.0.0.1',
    libvirtUri: 'qemu:///system',
    cpus: 2,
    memoryMib: 2048,
    diskMib: 10_240,
    labels: {},
    imageRoot: `/tmp/${id}`,
    ...overrides,
  };
}
