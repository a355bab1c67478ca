/**
 * The programs `npm run build:guest` runs, each with the Debian package that ships it. Apart from the build so that
 * the prerequisite checks can name packages without loading it. libc6-dev (libc.a, for `gcc -static`) and
 * syslinux-common (ldlinux.c32) hold no program to look for, but the build needs them: they are in APT_PACKAGES.
 */
export const GUEST_BUILD_BINARIES: Readonly<Record<string, string>> = {
  gcc: 'gcc',
  cpio: 'cpio',
  'mkfs.vfat': 'dosfstools',
  mcopy: 'mtools',
  syslinux: 'syslinux',
  'apt-get': 'apt',
  'dpkg-deb': 'dpkg',
};

/** Every package the build uses, for the README's set-up line and .ci/run (they list the same ones). */
export const GUEST_BUILD_PACKAGES = ['gcc', 'libc6-dev', 'cpio', 'dosfstools', 'mtools', 'syslinux', 'syslinux-common'];
