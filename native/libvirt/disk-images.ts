import { randomBytes } from 'node:crypto';
import { link, mkdir, rm, stat } from 'node:fs/promises';
import { dirname } from 'node:path';

import { createProcessRunner } from './command-runner';
import type { CommandRunner } from './command-runner';
import { DiskFormat, assertPathUnderRoot } from './domain-xml';

export const DiskImageErrorCode = {
  /** An image already exists at the path with another format or size; it is never overwritten. */
  conflict: 'conflict',
  qemuImgFailed: 'qemu-img-failed',
} as const;
export type DiskImageErrorCode = (typeof DiskImageErrorCode)[keyof typeof DiskImageErrorCode];

export class DiskImageError extends Error {
  override readonly name = 'DiskImageError';
  constructor(
    message: string,
    readonly code: DiskImageErrorCode,
  ) {
    super(message);
  }
}

export interface DiskImageInfo {
  path: string;
  format: string;
  virtualSizeBytes: number;
  /** Bytes allocated on the host; a fresh qcow2 is a few hundred KiB whatever its virtual size. */
  actualSizeBytes: number;
  backingFile: string | undefined;
}

export interface DiskImagesOptions {
  /** Every path handled must lie inside this directory. */
  imageRoot: string;
  runner?: CommandRunner;
  qemuImgPath?: string;
}

const QEMU_IMG_TIMEOUT_MS = 60_000;

/** Creates, inspects and removes guest disk images with qemu-img. Every operation is idempotent. */
export class DiskImages {
  private readonly imageRoot: string;
  private readonly runner: CommandRunner;
  private readonly qemuImgPath: string;

  constructor(options: DiskImagesOptions) {
    this.imageRoot = options.imageRoot;
    this.runner = options.runner ?? createProcessRunner();
    this.qemuImgPath = options.qemuImgPath ?? 'qemu-img';
  }

  /**
   * Creates an empty image. An existing image of the same format and virtual size counts as success, so a
   * retried activity passes; any other existing file is a conflict and stays untouched.
   */
  async create(input: { path: string; format: DiskFormat; sizeBytes: number }): Promise<{
    created: boolean;
    info: DiskImageInfo;
  }> {
    assertPathUnderRoot({ path: input.path, root: this.imageRoot });
    if (!Object.values(DiskFormat).includes(input.format)) {
      throw new DiskImageError(`unsupported format ${String(input.format)}`, DiskImageErrorCode.qemuImgFailed);
    }
    if (!Number.isSafeInteger(input.sizeBytes) || input.sizeBytes <= 0 || input.sizeBytes % 512 !== 0) {
      throw new DiskImageError('sizeBytes must be a positive multiple of 512', DiskImageErrorCode.qemuImgFailed);
    }
    const existing = await this.info({ path: input.path });
    if (existing) return { created: false, info: this.assertMatches(existing, input) };

    await mkdir(dirname(input.path), { recursive: true });
    // Build under a private name and hard-link into place: link() fails if the target exists, so a concurrent
    // create can never truncate an image another call just made (qemu-img create would overwrite it).
    const staging = `${input.path}.creating-${randomBytes(6).toString('hex')}`;
    try {
      await this.qemuImg(
        ['create', '-q', '-f', input.format, staging, String(input.sizeBytes)],
        `create ${input.path}`,
      );
      await link(staging, input.path);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const raced = await this.info({ path: input.path });
      if (!raced) throw err;
      return { created: false, info: this.assertMatches(raced, input) };
    } finally {
      await rm(staging, { force: true });
    }
    const info = await this.info({ path: input.path });
    if (!info)
      throw new DiskImageError(`${input.path} vanished right after creation`, DiskImageErrorCode.qemuImgFailed);
    return { created: true, info };
  }

  /** Undefined when no file exists at the path. Works on images a running guest holds locked. */
  async info(input: { path: string }): Promise<DiskImageInfo | undefined> {
    assertPathUnderRoot({ path: input.path, root: this.imageRoot });
    try {
      await stat(input.path);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
    const out = await this.qemuImg(['info', '--output=json', '--force-share', input.path], `info ${input.path}`);
    const parsed = JSON.parse(out) as Record<string, unknown>;
    return {
      path: input.path,
      format: String(parsed['format']),
      virtualSizeBytes: Number(parsed['virtual-size']),
      actualSizeBytes: Number(parsed['actual-size'] ?? 0),
      backingFile: typeof parsed['backing-filename'] === 'string' ? parsed['backing-filename'] : undefined,
    };
  }

  async remove(input: { path: string }): Promise<{ removed: boolean }> {
    assertPathUnderRoot({ path: input.path, root: this.imageRoot });
    try {
      await rm(input.path);
      return { removed: true };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { removed: false };
      throw err;
    }
  }

  private assertMatches(info: DiskImageInfo, wanted: { format: DiskFormat; sizeBytes: number }): DiskImageInfo {
    if (info.format !== wanted.format || info.virtualSizeBytes !== wanted.sizeBytes) {
      throw new DiskImageError(
        `${info.path} already exists as ${info.format} of ${info.virtualSizeBytes} bytes, ` +
          `not ${wanted.format} of ${wanted.sizeBytes} bytes`,
        DiskImageErrorCode.conflict,
      );
    }
    return info;
  }

  private async qemuImg(args: string[], operation: string): Promise<string> {
    const result = await this.runner.run({ file: this.qemuImgPath, args, timeoutMs: QEMU_IMG_TIMEOUT_MS });
    if (result.exitCode !== 0 || result.timedOut) {
      const reason = result.timedOut ? `timed out after ${QEMU_IMG_TIMEOUT_MS} ms` : result.stderr.trim();
      throw new DiskImageError(`qemu-img ${operation}: ${reason}`, DiskImageErrorCode.qemuImgFailed);
    }
    return result.stdout;
  }
}
