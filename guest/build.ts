/**
 * Builds `novacron-testguest`, the small bootable disk image the live migration tests run: Debian's kernel, an
 * initramfs holding only workload.c compiled static as its init, and syslinux on a FAT filesystem that fills the
 * whole disk (SeaBIOS boots it as a superfloppy, so no partition table is needed). Everything comes from Debian
 * packages (the kernel through `apt-get download`, unpacked, never installed) or is compiled here. The image is
 * cached outside the repository, keyed by a hash of its inputs, like the embedded Temporal server.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, rename, rm, truncate, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { gzip } from 'node:zlib';

import { novacronCacheRoot } from '../config/paths';
import { GUEST_BUILD_PACKAGES } from './build-tools';

export const TESTGUEST_NAME = 'novacron-testguest';
const KERNEL_METAPACKAGE = 'linux-image-amd64';
const IMAGE_FILE = `${TESTGUEST_NAME}.raw`;
// The kernel (about 8 MiB) and the initramfs (under 1 MiB) with room to spare; the FAT volume is the whole disk.
const IMAGE_MIB = 16;
const SOURCE_FILES = ['build.ts', 'workload.c'];
const COMMAND_TIMEOUT_MS = 5 * 60_000;

// SERIAL 0 sends syslinux's own messages to the serial console too, so a boot that stops there shows why.
const SYSLINUX_CFG = `SERIAL 0 115200
DEFAULT guest
PROMPT 0
TIMEOUT 0
LABEL guest
  LINUX /vmlinuz
  INITRD /initrd.gz
  APPEND console=ttyS0,115200 quiet panic=0
`;

export class GuestBuildError extends Error {
  override readonly name = 'GuestBuildError';
}

export interface TestGuestImage {
  path: string;
  format: 'raw';
  /** The inputs' hash, which names the cache directory. */
  key: string;
  /** Whether this call built it (false: it came from the cache). */
  built: boolean;
}

export interface EnsureTestGuestImageOptions {
  log?: (msg: string) => void;
}

export function testGuestCacheRoot(): string {
  return path.join(novacronCacheRoot(), 'testguest');
}

function run(command: string, args: string[], opts: { cwd?: string; input?: string } = {}): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, {
      cwd: opts.cwd,
      timeout: COMMAND_TIMEOUT_MS,
    });
    const stdout: Buffer[] = [];
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => stdout.push(chunk));
    child.stderr.on('data', (chunk: Buffer) => (stderr = (stderr + chunk.toString('utf8')).slice(-4000)));
    child.on('error', (err) => reject(new GuestBuildError(`could not run ${command}: ${err.message}`)));
    child.on('close', (code, signal) => {
      if (code === 0) return resolve(Buffer.concat(stdout));
      const how = signal ? `was killed by ${signal}` : `exited with code ${code}`;
      reject(new GuestBuildError(`${command} ${args.join(' ')} ${how}:\n${stderr.trim()}`));
    });
    // A command that exits without reading its input reports that through its exit status, not as EPIPE here.
    child.stdin.on('error', () => undefined);
    child.stdin.end(opts.input ?? '');
  });
}

/** The kernel package the metapackage depends on today, and its version, from the local APT lists. */
async function kernelPackage(): Promise<{ name: string; version: string }> {
  const depends = String(await run('apt-cache', ['depends', '--no-recommends', '--no-suggests', KERNEL_METAPACKAGE]));
  const name = /Depends:\s*(linux-image-\S+)/.exec(depends)?.[1];
  const show = name ? String(await run('apt-cache', ['show', '--no-all-versions', name])) : '';
  const version = /^Version:\s*(\S+)/m.exec(show)?.[1];
  if (!name || !version) {
    throw new GuestBuildError(`APT knows no ${KERNEL_METAPACKAGE} kernel: run \`apt-get update\` and retry`);
  }
  return { name, version };
}

/** The installed versions of the build's packages: a new gcc, libc or syslinux rebuilds the image. */
async function toolVersions(): Promise<string> {
  try {
    return String(await run('dpkg-query', ['-W', '-f', '${Package}=${Version}\\n', ...GUEST_BUILD_PACKAGES]));
  } catch (err) {
    throw new GuestBuildError(
      `the test guest's build needs ${GUEST_BUILD_PACKAGES.join(' ')}: ` +
        `apt-get install -y --no-install-recommends ${GUEST_BUILD_PACKAGES.join(' ')}\n${(err as Error).message}`,
    );
  }
}

function inputsKey(kernel: { name: string; version: string }, tools: string): string {
  const hash = createHash('sha256');
  for (const file of SOURCE_FILES) hash.update(`${file}\0`).update(readFileSync(path.join(__dirname, file)));
  hash.update(`\0${kernel.name}=${kernel.version}\0${tools}`);
  return hash.digest('hex').slice(0, 16);
}

async function buildImage(work: string, kernel: { name: string; version: string }, output: string): Promise<void> {
  // APT's sandbox user cannot write a root-owned temporary directory; the download is of a signed package list's
  // file either way.
  await run('apt-get', ['download', '-q', '-o', 'APT::Sandbox::User=root', `${kernel.name}=${kernel.version}`], {
    cwd: work,
  });
  const deb = (await readdir(work)).find((f) => f.startsWith(`${kernel.name}_`) && f.endsWith('.deb'));
  if (!deb) throw new GuestBuildError(`apt-get download left no ${kernel.name} package in ${work}`);
  await run('dpkg-deb', ['-x', deb, 'kernel'], { cwd: work });
  const vmlinuz = path.join(work, 'kernel', 'boot', `vmlinuz-${kernel.name.replace(/^linux-image-/, '')}`);
  if (!existsSync(vmlinuz)) throw new GuestBuildError(`${deb} holds no ${path.basename(vmlinuz)}`);

  const root = path.join(work, 'initramfs');
  await mkdir(root);
  await run(
    'gcc',
    ['-static', '-O2', '-s', '-Wall', '-Wextra', '-Werror', '-o', path.join(root, 'init'), 'workload.c'],
    {
      cwd: __dirname,
    },
  );
  // newc is the format the kernel unpacks; owner 0:0 and a fixed mtime keep the archive independent of the builder.
  const cpio = await run('cpio', ['-o', '-H', 'newc', '-R', '0:0', '--reproducible', '--quiet'], {
    cwd: root,
    input: 'init\n',
  });
  await writeFile(path.join(work, 'initrd.gz'), await promisify(gzip)(cpio, { level: 9 }));
  await writeFile(path.join(work, 'syslinux.cfg'), SYSLINUX_CFG);

  await writeFile(output, '');
  await truncate(output, IMAGE_MIB * 1024 * 1024);
  await run('mkfs.vfat', ['--invariant', '-n', 'TESTGUEST', output]);
  for (const [from, to] of [
    [vmlinuz, 'vmlinuz'],
    [path.join(work, 'initrd.gz'), 'initrd.gz'],
    [path.join(work, 'syslinux.cfg'), 'syslinux.cfg'],
  ] as const) {
    await run('mcopy', ['-i', output, from, `::${to}`]);
  }
  // Writes the boot sector and ldlinux.sys/.c32 through mtools, so the image is never mounted.
  await run('syslinux', ['--install', output]);
}

/** The cached image for the current inputs, built first when there is none. */
export async function ensureTestGuestImage(opts: EnsureTestGuestImageOptions = {}): Promise<TestGuestImage> {
  const log = opts.log ?? ((msg: string) => process.stderr.write(`${msg}\n`));
  const kernel = await kernelPackage();
  const key = inputsKey(kernel, await toolVersions());
  const dir = path.join(testGuestCacheRoot(), key);
  const image = path.join(dir, IMAGE_FILE);
  if (existsSync(image)) return { path: image, format: 'raw', key, built: false };

  await mkdir(dir, { recursive: true });
  // Each build works in its own directory and renames its image into place (atomic within the directory): two
  // concurrent builds waste work but never leave a half-written image where a reader looks.
  const work = await mkdtemp(path.join(dir, '.build-'));
  const started = Date.now();
  try {
    log(`building ${TESTGUEST_NAME} from ${kernel.name} ${kernel.version} and guest/workload.c; cached in ${dir}`);
    const output = path.join(work, IMAGE_FILE);
    await buildImage(work, kernel, output);
    await rename(output, image);
  } finally {
    await rm(work, { recursive: true, force: true });
  }
  log(`built ${TESTGUEST_NAME} in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  return { path: image, format: 'raw', key, built: true };
}

if (require.main === module) {
  ensureTestGuestImage()
    .then((image) => process.stdout.write(`${image.path}\n`))
    .catch((err: unknown) => {
      process.stderr.write(`novacron: ${err instanceof Error ? err.message : String(err)}\n`);
      process.exit(1);
    });
}
