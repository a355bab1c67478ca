/**
 * The DWCP benchmark dataset: a real Debian root file system (debootstrap from Debian's mirror) packed into an ext4
 * image with `mke2fs -d`, and a v2 image of the same tree with about 5% of its file bytes rewritten, some files
 * added and some removed, as an upgrade would. Images are cached under the work directory and rebuilt only when
 * missing; they are never committed.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { lstat, mkdir, open, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

export interface DwcpDataset {
  v1Path: string;
  v2Path: string;
  imageBytes: number;
  /** Bytes the file system actually allocates (the rest are holes). */
  v1AllocatedBytes: number;
  treeBytes: number;
  changedBytes: number;
  addedBytes: number;
  removedBytes: number;
  description: string;
}

const SUITE = 'bookworm';
const MIRROR = 'http://deb.debian.org/debian';
const PACKAGES = ['python3', 'openssh-server', 'iproute2', 'curl', 'ca-certificates', 'less', 'vim-tiny'];
const IMAGE_BYTES = 768 * 1024 * 1024;
const CHANGE_FRACTION = 0.05;

async function sh(command: string, args: string[], timeoutMs = 30 * 60_000): Promise<string> {
  const { stdout } = await run(command, args, { timeout: timeoutMs, maxBuffer: 64 * 1024 * 1024 });
  return stdout;
}

/** Installs the Debian tools the benchmark needs when they are missing (the benchmark runs as root). */
export async function ensureBenchTools(): Promise<void> {
  const wanted: Record<string, string> = {
    debootstrap: 'debootstrap',
    mke2fs: 'e2fsprogs',
    nc: 'netcat-openbsd',
    rsync: 'rsync',
    zstd: 'zstd',
    tc: 'iproute2',
    time: 'time',
  };
  const missing: string[] = [];
  for (const [binary, pkg] of Object.entries(wanted)) {
    const found = await sh('sh', ['-c', `command -v ${binary} || true`]);
    if (found.trim() === '' && !(binary === 'time' && existsSync('/usr/bin/time'))) missing.push(pkg);
  }
  if (missing.length === 0) return;
  if (process.getuid?.() !== 0) throw new Error(`the DWCP benchmark needs root to install ${missing.join(', ')}`);
  await sh('apt-get', ['update', '-qq']);
  await sh('apt-get', ['install', '-y', '-qq', '--no-install-recommends', ...missing]);
}

async function treeFiles(root: string): Promise<{ path: string; size: number }[]> {
  const out: { path: string; size: number }[] = [];
  const walk = async (dir: string): Promise<void> => {
    for (const entry of await readdir(dir, { withFileTypes: true })) {
      const full = path.join(dir, entry.name);
      if (entry.isDirectory()) await walk(full);
      else if (entry.isFile()) out.push({ path: full, size: (await lstat(full)).size });
    }
  };
  await walk(root);
  return out.sort((a, b) => (a.path < b.path ? -1 : 1));
}

/** Deterministic choice: a file is picked when the hash of its path falls under the threshold. */
function pick(file: string, salt: string, fraction: number): boolean {
  const h = createHash('sha256').update(`${salt}:${file}`).digest().readUInt32BE(0);
  return h / 0x1_0000_0000 < fraction;
}

/**
 * Turns a copy of the v1 tree into v2: rewrites files (XOR of their content, sizes unchanged) until about 5% of
 * the tree's bytes differ, removes about 0.5% of files, and adds a few new ones.
 */
async function makeV2Tree(
  v1: string,
  v2: string,
): Promise<{ changed: number; added: number; removed: number; tree: number }> {
  await rm(v2, { recursive: true, force: true });
  // GNU cp, not fs.cp: the tree has device nodes, which only cp -a recreates.
  await sh('cp', ['-a', v1, v2]);
  const files = (await treeFiles(v2)).filter((f) => !f.path.includes(`${path.sep}dev${path.sep}`));
  const total = files.reduce((s, f) => s + f.size, 0);
  let changed = 0;
  let removed = 0;
  for (const file of files) {
    if (file.size === 0) continue;
    if (pick(file.path.slice(v2.length), 'remove', 0.005)) {
      await rm(file.path);
      removed += file.size;
      continue;
    }
    if (
      changed < total * CHANGE_FRACTION &&
      file.size < total * 0.01 &&
      pick(file.path.slice(v2.length), 'change', 0.08)
    ) {
      const data = await readFile(file.path);
      for (let i = 0; i < data.length; i++) data[i] = data[i]! ^ 0x5a;
      await writeFile(file.path, data);
      changed += data.length;
    }
  }
  let added = 0;
  const newDir = path.join(v2, 'opt', 'novacron-v2');
  await mkdir(newDir, { recursive: true });
  for (let i = 0; i < 8; i++) {
    // Text-like content: new config and scripts compress, as real upgrades mostly do.
    const body = Buffer.from(
      `# generated v2 file ${i}\n${'setting_%d = value\n'.replaceAll('%d', String(i)).repeat(20_000)}`,
    );
    await writeFile(path.join(newDir, `file-${i}.conf`), body);
    added += body.length;
  }
  return { changed, added, removed, tree: total };
}

async function makeImage(tree: string, image: string): Promise<void> {
  await rm(image, { force: true });
  const handle = await open(image, 'w');
  await handle.truncate(IMAGE_BYTES);
  await handle.close();
  // Fixed UUID and hash seed, so v1 and v2 differ only where their trees do, not in file system metadata seeds.
  await sh('mke2fs', [
    '-q',
    '-F',
    '-t',
    'ext4',
    '-U',
    '2f0d6a43-9c8e-4f55-9d43-6a4e1b7c0d01',
    '-E',
    'hash_seed=8b3a1c55-6d0e-4f6a-9b2c-0e7d5f4a3c21,root_owner=0:0',
    '-d',
    tree,
    image,
  ]);
}

export async function buildDwcpDataset(input: { dir: string; log: (line: string) => void }): Promise<DwcpDataset> {
  await mkdir(input.dir, { recursive: true });
  const rootfs = path.join(input.dir, 'rootfs-v1');
  const rootfsV2 = path.join(input.dir, 'rootfs-v2');
  const v1Path = path.join(input.dir, 'rootfs-v1.img');
  const v2Path = path.join(input.dir, 'rootfs-v2.img');
  const metaPath = path.join(input.dir, 'dataset.json');
  if (existsSync(metaPath) && existsSync(v1Path) && existsSync(v2Path)) {
    return JSON.parse(await readFile(metaPath, 'utf8')) as DwcpDataset;
  }
  if (!existsSync(path.join(rootfs, 'etc', 'debian_version'))) {
    input.log(`debootstrap ${SUITE} (minbase + ${PACKAGES.join(',')}) from ${MIRROR}`);
    await rm(rootfs, { recursive: true, force: true });
    await sh('debootstrap', ['--variant=minbase', `--include=${PACKAGES.join(',')}`, SUITE, rootfs, MIRROR]);
    // The apt cache holds the downloaded .debs, which a deployed image would not carry.
    await rm(path.join(rootfs, 'var', 'cache', 'apt', 'archives'), { recursive: true, force: true });
  }
  input.log('building v2 tree');
  const changes = await makeV2Tree(rootfs, rootfsV2);
  input.log('packing ext4 images with mke2fs -d');
  await makeImage(rootfs, v1Path);
  await makeImage(rootfsV2, v2Path);
  const info = await stat(v1Path);
  const dataset: DwcpDataset = {
    v1Path,
    v2Path,
    imageBytes: info.size,
    v1AllocatedBytes: info.blocks * 512,
    treeBytes: changes.tree,
    changedBytes: changes.changed,
    addedBytes: changes.added,
    removedBytes: changes.removed,
    description:
      `Debian ${SUITE} minbase + ${PACKAGES.join(', ')} (debootstrap), ext4 via mke2fs -d in a ` +
      `${IMAGE_BYTES / 1024 / 1024} MiB image; v2 rewrites ${((changes.changed / changes.tree) * 100).toFixed(1)}% ` +
      `of file bytes, removes ${((changes.removed / changes.tree) * 100).toFixed(1)}% and adds ${changes.added} bytes`,
  };
  await writeFile(metaPath, JSON.stringify(dataset, null, 2));
  return dataset;
}
