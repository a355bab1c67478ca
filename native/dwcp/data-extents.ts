/**
 * Where a file holds data: the extents outside which it is holes (sparse regions that read as zeros and are not
 * stored). Node has no SEEK_DATA/SEEK_HOLE, so the native addon (native/dwcp-native, built by npm install when
 * cargo is present) asks the kernel; without it the whole file counts as data and holes are found by reading them,
 * as zero chunks, which gives the same manifest at the cost of reading the zeros.
 */
import { statSync } from 'node:fs';
import { dwcpNative } from './native-addon';

const nativeDataExtents = dwcpNative?.dataExtents;

/** Which implementation answers: the benchmark records it next to its figures. */
export const dataExtentsImplementation: 'native' | 'typescript' =
  nativeDataExtents !== undefined ? 'native' : 'typescript';

/** A half-open byte range [start, end) of a file. */
export interface Extent {
  start: number;
  end: number;
}

/** The file's data extents in order; `fallback` forces the TypeScript answer (one extent, the whole file). */
export function dataExtents(file: string, options: { fallback?: boolean } = {}): Extent[] {
  if (nativeDataExtents === undefined || options.fallback === true) {
    const size = statSync(file).size;
    return size > 0 ? [{ start: 0, end: size }] : [];
  }
  const flat = nativeDataExtents(file);
  const extents: Extent[] = [];
  for (let i = 0; i + 1 < flat.length; i += 2) extents.push({ start: flat[i]!, end: flat[i + 1]! });
  return extents;
}
