/**
 * The test guest in a harness fleet's image library: built (or taken from its cache), copied into one host's
 * library and registered through POST /v1/images, as an operator would, so VMs boot from `novacron-testguest`.
 * Every test and benchmark that boots the guest on a fleet starts here.
 */
import { copyFile, mkdir } from 'node:fs/promises';
import path from 'node:path';
import { ensureTestGuestImage, TESTGUEST_NAME } from '../../guest/build';
import type { Fleet } from './fleet';

/** Resolves once the registration workflow completed (waitForWorkflow asserts it); throws when it was refused. */
export async function registerTestGuest(
  fleet: Pick<Fleet, 'imageRoots' | 'inject' | 'waitForWorkflow'>,
  input: { hostId?: string; timeoutMs?: number; log?: (line: string) => void } = {},
): Promise<void> {
  const hostId = input.hostId ?? 'host-1';
  const image = await ensureTestGuestImage({ log: input.log ?? ((line) => process.stderr.write(`${line}\n`)) });
  const imageRoot = fleet.imageRoots[hostId];
  if (imageRoot === undefined) throw new Error(`the fleet has no host ${hostId}`);
  const library = path.join(imageRoot, 'library', `${TESTGUEST_NAME}.raw`);
  await mkdir(path.dirname(library), { recursive: true });
  await copyFile(image.path, library);
  const registered = await fleet.inject({
    method: 'POST',
    url: '/v1/images',
    payload: { id: TESTGUEST_NAME, hostId, format: 'raw' },
  });
  if (registered.statusCode !== 202) {
    throw new Error(`registering ${TESTGUEST_NAME}: ${registered.statusCode} ${registered.body}`);
  }
  // Hashing the image is the slow part, and slower still on a loaded machine.
  await fleet.waitForWorkflow(registered.json<{ workflowId: string }>().workflowId, input.timeoutMs ?? 300_000);
}
