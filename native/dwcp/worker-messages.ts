/**
 * What crosses between the pool and its threads: the request and response messages, and the helpers that move
 * their byte arrays to the other thread instead of copying them, then restore them as Buffers there.
 */
import type { WorkerParts, WorkerResults, WorkerTask } from './worker-tasks';

export interface WorkerRequest {
  id: number;
  task: WorkerTask;
}

export type WorkerResponse =
  | { id: number; part: WorkerParts[keyof WorkerParts] }
  | { id: number; ok: true; result: WorkerResults[WorkerTask['kind']] }
  | { id: number; ok: false; error: { name: string; message: string; code?: string } };

/**
 * Prepares a message for postMessage: every byte array moves to the other thread instead of being cloned. A view
 * into a larger ArrayBuffer (a Buffer pool slab, a manifest slice) is first copied out, because structured clone
 * would copy its whole backing buffer, and transferring it would detach memory that others still use.
 */
function detachable(value: unknown, transfer: ArrayBuffer[]): unknown {
  if (value instanceof Uint8Array) {
    // Empty views (including buffers already moved to another thread) have nothing to move.
    if (value.byteLength === 0) return new Uint8Array(0);
    const owns =
      value.byteOffset === 0 && value.byteLength === value.buffer.byteLength && value.buffer instanceof ArrayBuffer;
    const bytes = owns ? value : new Uint8Array(value);
    if (!transfer.includes(bytes.buffer as ArrayBuffer)) transfer.push(bytes.buffer as ArrayBuffer);
    return bytes;
  }
  if (Array.isArray(value)) return value.map((v: unknown) => detachable(v, transfer));
  if (typeof value === 'object' && value !== null) {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) out[k] = detachable(v, transfer);
    return out;
  }
  return value;
}

/** Restores Buffer views on Uint8Arrays that arrive through postMessage. */
export function reviveBuffers<T>(value: T): T {
  if (value instanceof Uint8Array) return Buffer.from(value.buffer, value.byteOffset, value.byteLength) as T;
  if (Array.isArray(value)) return value.map((v: unknown) => reviveBuffers(v)) as T;
  if (typeof value === 'object' && value !== null) {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) out[k] = reviveBuffers(v);
    return out as T;
  }
  return value;
}

export function postWorkerMessage(input: {
  post: (message: unknown, transfer: ArrayBuffer[]) => void;
  message: unknown;
}): void {
  const transfer: ArrayBuffer[] = [];
  const message = detachable(input.message, transfer);
  input.post(message, transfer);
}
