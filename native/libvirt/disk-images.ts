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
  backingFormat: string | undefined;
}

export interface DiskImagesOptions {
  /** Every path handled must lie inside this directory or one of `otherRoots`. */
  imageRoot: string;
  /** More directories images may live in: the storage pools a host mounts besides its own image root. */
  otherRoots?: readonly string[];
  runner?: CommandRunner;
  qemuImgPath?: string;
}

const QEMU_IMG_TIMEOUT_MS = 60_000;
const SECTOR_BYTES = 512;

function roundUpToSector(bytes: number): number {
  return Math.ceil(bytes / SECTOR_BYTES) * SECTOR_BYTES;
}

/** Creates, inspects and removes guest disk images with qemu-img. Every operation is idempotent. */
export class DiskImages {
  private readonly roots: readonly string[];
  private readonly runner: CommandRunner;
  private readonly qemuImgPath: string;

  constructor(options: DiskImagesOptions) {
    this.roots = [options.imageRoot, ...(options.otherRoots ?? [])];
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
    this.assertInsideRoots(input.path);
    if (!Object.values(DiskFormat).includes(input.format)) {
      throw new DiskImageError(`unsupported format ${String(input.format)}`, DiskImageErrorCode.qemuImgFailed);
    }
    if (!Number.isSafeInteger(input.sizeBytes) || input.sizeBytes <= 0 || input.sizeBytes % 512 !== 0) {
      throw new DiskImageError('sizeBytes must be a positive multiple of 512', DiskImageErrorCode.qemuImgFailed);
    }
    return this.createOnce(input.path, ['-f', input.format], String(input.sizeBytes), (info) =>
      this.assertMatches(info, input),
    );
  }

  /**
   * Creates a qcow2 overlay whose backing file is `backingPath`: the guest reads the base through it and writes
   * only to the overlay, so one base serves every VM made from it and is never written. Its virtual size is
   * `sizeBytes`, or the base's when that is not larger. An existing overlay on the same base and of that size counts
   * as success; anything else at the path is a conflict.
   */
  async createOverlay(input: {
    path: string;
    backingPath: string;
    backingFormat: DiskFormat;
    sizeBytes?: number;
  }): Promise<{ created: boolean; info: DiskImageInfo }> {
    this.assertInsideRoots(input.path);
    this.assertInsideRoots(input.backingPath);
    if (!Object.values(DiskFormat).includes(input.backingFormat)) {
      throw new DiskImageError(
        `unsupported backing format ${String(input.backingFormat)}`,
        DiskImageErrorCode.qemuImgFailed,
      );
    }
    if (input.sizeBytes !== undefined && (!Number.isSafeInteger(input.sizeBytes) || input.sizeBytes <= 0)) {
      throw new DiskImageError('sizeBytes must be a positive integer', DiskImageErrorCode.qemuImgFailed);
    }
    const base = await this.info({ path: input.backingPath });
    if (!base) {
      throw new DiskImageError(`backing image ${input.backingPath} does not exist`, DiskImageErrorCode.qemuImgFailed);
    }
    if (base.format !== input.backingFormat) {
      throw new DiskImageError(
        `backing image ${input.backingPath} is ${base.format}, not ${input.backingFormat}`,
        DiskImageErrorCode.conflict,
      );
    }
    // qcow2 sizes are whole 512-byte sectors: a base of odd size is rounded up, as qemu-img would.
    const sizeBytes = roundUpToSector(Math.max(input.sizeBytes ?? 0, base.virtualSizeBytes));
    // The format is recorded in the overlay (-F): libvirt refuses to probe a backing file's format itself.
    return this.createOnce(
      input.path,
      ['-f', DiskFormat.qcow2, '-b', input.backingPath, '-F', input.backingFormat],
      String(sizeBytes),
      (info) => {
        if (
          info.format !== DiskFormat.qcow2 ||
          info.backingFile !== input.backingPath ||
          info.virtualSizeBytes !== sizeBytes
        ) {
          throw new DiskImageError(
            `${info.path} already exists as ${info.format} of ${info.virtualSizeBytes} bytes on ` +
              `${info.backingFile ?? 'no backing file'}, not a qcow2 overlay of ${sizeBytes} bytes on ${input.backingPath}`,
            DiskImageErrorCode.conflict,
          );
        }
        return info;
      },
    );
  }

  /** Undefined when no file exists at the path. Works on images a running guest holds locked. */
  async info(input: { path: string }): Promise<DiskImageInfo | undefined> {
    this.assertInsideRoots(input.path);
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
      backingFormat:
        typeof parsed['backing-filename-format'] === 'string' ? parsed['backing-filename-format'] : undefined,
    };
  }

  async remove(input: { path: string }): Promise<{ removed: boolean }> {
    this.assertInsideRoots(input.path);
    try {
      await rm(input.path);
      return { removed: true };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { removed: false };
      throw err;
    }
  }

  /**
   * Runs `qemu-img create` unless an image is already at the path, which `matches` then judges. Builds under a
   * private name and hard-links into place: link() fails if the target exists, so a concurrent create can never
   * truncate an image another call just made (qemu-img create would overwrite it).
   */
  private async createOnce(
    target: string,
    formatArgs: string[],
    size: string,
    matches: (info: DiskImageInfo) => DiskImageInfo,
  ): Promise<{ created: boolean; info: DiskImageInfo }> {
    const existing = await this.info({ path: target });
    if (existing) return { created: false, info: matches(existing) };

    await mkdir(dirname(target), { recursive: true });
    const staging = `${target}.creating-${randomBytes(6).toString('hex')}`;
    try {
      await this.qemuImg(['create', '-q', ...formatArgs, staging, size], `create ${target}`);
      await link(staging, target);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const raced = await this.info({ path: target });
      if (!raced) throw err;
      return { created: false, info: matches(raced) };
    } finally {
      await rm(staging, { force: true });
    }
    const info = await this.info({ path: target });
    if (!info) throw new DiskImageError(`${target} vanished right after creation`, DiskImageErrorCode.qemuImgFailed);
    return { created: true, info };
  }

  /** Inside one of the roots; the error names the first, the image root, when none holds it. */
  private assertInsideRoots(file: string): void {
    let firstError: unknown;
    for (const root of this.roots) {
      try {
        assertPathUnderRoot({ path: file, root });
        return;
      } catch (err) {
        firstError ??= err;
      }
    }
    throw firstError;
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
