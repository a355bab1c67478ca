/**
 * `npm start` offers the test guest (guest/, `npm run build:guest`) in the image library as `novacron-testguest`, so
 * a new user can create a real VM on the local hosts' shared pool and migrate it at once. At every start, once a
 * local host is up: nothing to do when the image is registered; otherwise the guest is built (or taken from its
 * cache) when this machine has the build's packages, placed in the host's library, and registered through the
 * registerImage workflow as an operator's POST /v1/images would. Without the packages it prints how to get them.
 */
import { WorkflowExecutionAlreadyStartedError, WorkflowIdReusePolicy, type Client } from '@temporalio/client';
import { copyFile, mkdir, rename, rm } from 'node:fs/promises';
import path from 'node:path';
import type { Pool } from 'pg';
import type { NovacronConfig } from '../config/schema';
import { imageFileName } from '../domain/image';
import { ensureTestGuestImage, TESTGUEST_NAME } from '../guest/build';
import { getHost } from '../store/hosts';
import { getImage } from '../store/images';
import type { registerImage } from '../workflows/image-workflows';
import { systemProbes, stackContext } from './prerequisite-probes';
import { checkPrerequisites } from './prerequisites';

const HOST_UP_TIMEOUT_MS = 180_000;
const POLL_MS = 500;

export interface OfferTestGuestInput {
  config: NovacronConfig;
  pool: Pool;
  client: Client;
  /** The host whose library receives the image file. */
  hostId: string;
  /** The pool a VM from it would name; shown in the hint. */
  storagePool: string;
  apiUrl: string;
  print: (line: string) => void;
  signal: AbortSignal;
}

// The CLI's own default (cli/api-client.ts): only another API needs naming.
const CLI_DEFAULT_API_URL = 'http://127.0.0.1:8080';

/** The README's walkthrough from here: a VM from the image on the shared pool, then moving it to the other host. */
function hint(input: OfferTestGuestInput): string[] {
  const api = input.apiUrl === CLI_DEFAULT_API_URL ? '' : ` --api ${input.apiUrl}`;
  return [
    `  a VM from it: bin/novacron vm create tg-1 --vcpus 1 --memory 256 --image ${TESTGUEST_NAME} ` +
      `--pool ${input.storagePool} --oem-string novacron.dirty-mibps=8${api} --wait`,
    `  then move it: bin/novacron vm migrate <VM id> --wait${api}`,
  ];
}

const sleep = (ms: number, signal: AbortSignal) =>
  new Promise<void>((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener('abort', () => (clearTimeout(timer), resolve()), { once: true });
  });

async function waitForHost(input: OfferTestGuestInput) {
  const deadline = Date.now() + HOST_UP_TIMEOUT_MS;
  while (!input.signal.aborted && Date.now() < deadline) {
    const host = await getHost(input.pool, input.hostId);
    if (host?.state === 'up' && host.dwcpEndpoint) return host;
    await sleep(POLL_MS, input.signal);
  }
  return undefined;
}

/** Starts the registration, or follows one already running; resolves when the image is recorded. */
async function register(input: OfferTestGuestInput): Promise<void> {
  const workflowId = `image-register-${TESTGUEST_NAME}`;
  const handle = await input.client.workflow
    .start<typeof registerImage>('registerImage', {
      workflowId,
      taskQueue: input.config.temporal.taskQueue,
      args: [
        {
          imageId: TESTGUEST_NAME,
          hostId: input.hostId,
          format: 'raw',
          description: 'NovaCron test guest: heartbeat on ttyS0, memory dirtied as its SMBIOS OEM strings ask',
        },
      ],
      // The caller found the image missing from the store: an earlier run that ended (failed, or completed for a
      // database since replaced) must not stand in for this registration.
      workflowIdReusePolicy: WorkflowIdReusePolicy.ALLOW_DUPLICATE,
    })
    .catch((err: unknown) => {
      if (err instanceof WorkflowExecutionAlreadyStartedError) return input.client.workflow.getHandle(workflowId);
      throw err;
    });
  await handle.result();
}

/** Never throws: the stack runs without the test guest, and says why in one line. */
export async function offerTestGuest(input: OfferTestGuestInput): Promise<void> {
  const { print } = input;
  try {
    if (await getImage(input.pool, TESTGUEST_NAME)) {
      print(`test guest: image ${TESTGUEST_NAME} is in the library`);
      for (const line of hint(input)) print(line);
      return;
    }
    const [check] = await checkPrerequisites(systemProbes(), stackContext(input.config), ['guest']);
    if (check && !check.ok) {
      print(`no test guest image: ${check.summary}; fix: ${check.fix}, then start again`);
      return;
    }
    const host = await waitForHost(input);
    if (!host) {
      if (!input.signal.aborted) print(`no test guest image: host ${input.hostId} did not come up`);
      return;
    }
    const image = await ensureTestGuestImage({ log: print });
    if (input.signal.aborted) return;
    // Copied under a private name and renamed: the agent never hashes a half-written file.
    const target = path.join(host.imageRoot, imageFileName({ imageId: TESTGUEST_NAME, format: image.format }));
    const staging = `${target}.copying-${process.pid}`;
    await mkdir(path.dirname(target), { recursive: true });
    try {
      await copyFile(image.path, staging);
      await rename(staging, target);
    } finally {
      await rm(staging, { force: true });
    }
    await Promise.race([register(input), new Promise((resolve) => input.signal.addEventListener('abort', resolve))]);
    if (input.signal.aborted) return;
    print(`test guest registered as image ${TESTGUEST_NAME} (from ${host.id}'s library, build ${image.key})`);
    for (const line of hint(input)) print(line);
  } catch (err) {
    print(`no test guest image: ${err instanceof Error ? err.message.split('\n')[0] : String(err)}`);
  }
}
