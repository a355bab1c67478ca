/**
 * The programs local hypervisors need, each with the Debian/Ubuntu package that ships it, and how they are found.
 * Apart from the harness so that the prerequisite checks can name packages without loading the harness.
 *
 * libvirtd and virtlogd ship in libvirt-daemon, but the package to install is libvirt-daemon-system: the QEMU
 * driver looks up its compiled-in default user, libvirt-qemu, before it reads the harness's qemu.conf (user root),
 * and that user is created by libvirt-daemon-system. Seen in a fresh Debian 12 with libvirt-daemon alone: libvirtd
 * exits with "Failed to parse user 'libvirt-qemu'".
 */
import { accessSync, constants } from 'node:fs';
import { delimiter, join } from 'node:path';

export const HYPERVISOR_BINARIES: Readonly<Record<string, string>> = {
  libvirtd: 'libvirt-daemon-system',
  virtlogd: 'libvirt-daemon-system',
  virsh: 'libvirt-clients',
  'qemu-system-x86_64': 'qemu-system-x86',
  'qemu-img': 'qemu-utils',
  unshare: 'util-linux',
  setpriv: 'util-linux',
};
export const REQUIRED_BINARIES = Object.keys(HYPERVISOR_BINARIES);

/**
 * What a networked harness (`network: true`) needs besides: namespaces, veth pairs and a bridge, and rate caps.
 * Apart from HYPERVISOR_BINARIES because hosts without a network of their own need neither.
 */
export const NETWORK_BINARIES: Readonly<Record<string, string>> = { ip: 'iproute2', tc: 'iproute2' };

/** PATH plus /usr/sbin and /sbin, where libvirtd and virtlogd live and a non-login PATH may not look. */
export function searchPath(): string {
  return [process.env['PATH'] ?? '', '/usr/sbin', '/sbin'].filter((d) => d !== '').join(delimiter);
}

/** The path of a program on searchPath(), or undefined. */
export function findExecutable(name: string): string | undefined {
  for (const dir of searchPath().split(delimiter)) {
    if (dir === '') continue;
    try {
      accessSync(join(dir, name), constants.X_OK);
      return join(dir, name);
    } catch {
      // Not in this directory; keep looking.
    }
  }
  return undefined;
}
