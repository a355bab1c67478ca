import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync, statSync } from 'node:fs';

import type { CommandResult, CommandRunner, RunInput, SpawnedCommand } from './command-runner';
import {
  LibvirtAlreadyExistsError,
  LibvirtConnectionLostError,
  LibvirtError,
  LibvirtErrorCode,
  LibvirtInvalidStateError,
  LibvirtNotFoundError,
  isAlreadyExists,
  isConnectionLost,
  isInvalidState,
  isNotFound,
  tolerate,
} from './errors';
import { LibvirtConnection } from './libvirt-connection';
import { DomainJobType, DomainState, ShutdownOutcome } from './libvirt-types';
import { parseEventLine } from './virsh-parsers';

const URI = 'qemu:///system?socket=/tmp/hv/host-1/sock/libvirt-sock';

type Reply = Partial<CommandResult> | ((input: RunInput) => Partial<CommandResult>);

/** Answers each virsh subcommand (the first argument after `-c URI`) from a table; records every call. */
function fakeRunner(replies: Record<string, Reply | Reply[]>, events?: { lines: string[]; stderr?: string }) {
  const calls: RunInput[] = [];
  let killed = false;
  const runner: CommandRunner = {
    run: (input) => {
      calls.push(input);
      assert.deepEqual(input.args.slice(0, 2), ['-c', URI]);
      const key = input.args[2] ?? '';
      const entry = replies[key];
      if (entry === undefined) throw new Error(`unexpected virsh ${key}`);
      const reply = Array.isArray(entry) ? (entry.length > 1 ? entry.shift() : entry[0]) : entry;
      const partial = typeof reply === 'function' ? reply(input) : (reply ?? {});
      return Promise.resolve({ exitCode: 0, signal: null, stdout: '', stderr: '', timedOut: false, ...partial });
    },
    spawn: (): SpawnedCommand => {
      let finish!: () => void;
      const finished = new Promise<void>((resolve) => (finish = resolve));
      const lines = (async function* () {
        for (const line of events?.lines ?? []) yield line;
        // Without stderr the fake stays open until killed, like a healthy `virsh event --loop`.
        if (events?.stderr === undefined) await finished;
      })();
      return {
        lines,
        exited: (async () => {
          if (events?.stderr === undefined) await finished;
          return {
            exitCode: killed ? null : 1,
            signal: null,
            stdout: '',
            stderr: events?.stderr ?? '',
            timedOut: false,
          };
        })(),
        kill: () => {
          killed = true;
          finish();
        },
      };
    },
  };
  return { runner, calls };
}

function failing(stderr: string): Partial<CommandResult> {
  return { exitCode: 1, stderr };
}

test('maps virsh error text to typed errors with libvirt codes', async () => {
  const cases: Array<
    [string, abstract new (...args: never[]) => LibvirtError, LibvirtErrorCode, (err: unknown) => boolean]
  > = [
    ["error: failed to get domain 'nope'\n", LibvirtNotFoundError, LibvirtErrorCode.noDomain, isNotFound],
    [
      "error: Domain not found: no domain with matching name 'nope'\n",
      LibvirtNotFoundError,
      LibvirtErrorCode.noDomain,
      isNotFound,
    ],
    [
      "error: Failed to start domain 'g1'\nerror: Requested operation is not valid: domain is already running\n",
      LibvirtInvalidStateError,
      LibvirtErrorCode.operationInvalid,
      isInvalidState,
    ],
    ['error: Domain is already active\n', LibvirtInvalidStateError, LibvirtErrorCode.operationInvalid, isInvalidState],
    [
      "error: Failed to define domain from /dev/stdin\nerror: operation failed: domain 'g1' already exists with uuid 0d2131ee-bdc5-4ca5-a03c-28de68fbe97d\n",
      LibvirtAlreadyExistsError,
      LibvirtErrorCode.operationFailed,
      isAlreadyExists,
    ],
    [
      "error: failed to connect to the hypervisor\nerror: Failed to connect socket to '/tmp/hv/host-1/sock/libvirt-sock': No such file or directory\n",
      LibvirtConnectionLostError,
      LibvirtErrorCode.noConnect,
      isConnectionLost,
    ],
    [
      'error: End of file while reading data: Input/output error\n',
      LibvirtConnectionLostError,
      LibvirtErrorCode.unknown,
      isConnectionLost,
    ],
    [
      "error: XML error: Invalid value for attribute 'type'\n",
      LibvirtError,
      LibvirtErrorCode.xmlError,
      (err) => err instanceof LibvirtError,
    ],
  ];
  for (const [stderr, cls, code, predicate] of cases) {
    const { runner } = fakeRunner({ start: failing(stderr) });
    const conn = new LibvirtConnection({ uri: URI, runner });
    const err = await conn.domainCreate({ name: 'g1' }).then(
      () => assert.fail('expected a rejection'),
      (e: unknown) => e,
    );
    assert.ok(err instanceof cls, `${stderr} gave ${String(err)}`);
    assert.equal(err.code, code, stderr);
    assert.equal(err.operation, 'start g1');
    assert.ok(predicate(err));
    assert.match((err as Error).message, /^start g1: /);
  }
});

test('the predicates do not confuse the classes', () => {
  const notFound = new LibvirtNotFoundError({ message: 'm', code: LibvirtErrorCode.noDomain, operation: 'o' });
  assert.ok(isNotFound(notFound));
  assert.ok(!isInvalidState(notFound) && !isAlreadyExists(notFound) && !isConnectionLost(notFound));
  assert.ok(!isNotFound(new Error('Domain not found')));
});

test('tolerate turns an accepted error into undefined and rethrows the rest', async () => {
  const { runner } = fakeRunner({
    destroy: failing(
      "error: Failed to destroy domain 'g1'\nerror: Requested operation is not valid: domain is not running\n",
    ),
    start: failing("error: failed to get domain 'g1'\n"),
  });
  const conn = new LibvirtConnection({ uri: URI, runner });
  assert.equal(await tolerate(conn.domainDestroy({ name: 'g1' }), isInvalidState), undefined);
  await assert.rejects(tolerate(conn.domainCreate({ name: 'g1' }), isInvalidState), LibvirtNotFoundError);
});

test('a hung virsh becomes a timeout error', async () => {
  const { runner } = fakeRunner({ start: { exitCode: null, signal: 'SIGKILL', timedOut: true } });
  const conn = new LibvirtConnection({ uri: URI, runner, commandTimeoutMs: 5 });
  await assert.rejects(conn.domainCreate({ name: 'g1' }), (err: LibvirtError) => {
    assert.equal(err.code, LibvirtErrorCode.commandTimeout);
    return true;
  });
});

test('unsafe names are rejected before any virsh runs', async () => {
  const { runner, calls } = fakeRunner({});
  const conn = new LibvirtConnection({ uri: URI, runner });
  for (const name of ['--all', 'a b', 'a;b', '']) {
    await assert.rejects(conn.domainDestroy({ name }), (err: LibvirtError) => err.code === LibvirtErrorCode.invalidArg);
  }
  await assert.rejects(conn.domainDefineXML({ xml: '<domain><name>--x</name></domain>' }), LibvirtError);
  await assert.rejects(conn.domainDefineXML({ xml: '<domain><name>x</name>' }), LibvirtError);
  assert.equal(calls.length, 0);
});

test('define hands virsh the XML in a private file, then looks the domain up', async () => {
  let defined = '';
  const { runner, calls } = fakeRunner({
    define: (input) => {
      const file = input.args[4] ?? '';
      defined = readFileSync(file, 'utf8');
      assert.equal(statSync(file).mode & 0o077, 0, 'nobody else may read the XML');
      return { stdout: `Domain 'g1' defined from ${file}\n` };
    },
    dominfo: {
      stdout:
        'Id:             -\nName:           g1\nUUID:           0d2131ee-bdc5-4ca5-a03c-28de68fbe97d\n' +
        'OS Type:        hvm\nState:          shut off\nCPU(s):         1\nPersistent:     yes\nAutostart:      disable\n',
    },
  });
  const conn = new LibvirtConnection({ uri: URI, runner });
  const xml = '<domain type="qemu"><name>g1</name></domain>';
  const domain = await conn.domainDefineXML({ xml });
  assert.deepEqual(domain, {
    id: undefined,
    name: 'g1',
    uuid: '0d2131ee-bdc5-4ca5-a03c-28de68fbe97d',
    state: DomainState.shutOff,
    persistent: true,
    autostart: false,
  });
  assert.deepEqual(calls[0]?.args.slice(2, 4), ['define', '--file']);
  assert.equal(defined, xml);
  assert.ok(!existsSync(calls[0]?.args[4] ?? ''), 'the file is removed afterwards');
  assert.deepEqual(calls[1]?.args.slice(2), ['dominfo', '--domain', 'g1']);
});

test('listAllDomains joins uuids and states from one virsh run', async () => {
  const { runner, calls } = fakeRunner({
    'list --all --uuid --name ; domstats --raw --state': {
      stdout:
        '0d2131ee-bdc5-4ca5-a03c-28de68fbe97d g1\n11111111-2222-3333-4444-555555555555 g2\n' +
        '22222222-2222-3333-4444-555555555555 gone\n\n' +
        "Domain: 'g1'\n  state.state=1\n  state.reason=1\n\nDomain: 'g2'\n  state.state=5\n  state.reason=0\n\n",
    },
  });
  const conn = new LibvirtConnection({ uri: URI, runner });
  assert.deepEqual(await conn.listAllDomains(), [
    { name: 'g1', uuid: '0d2131ee-bdc5-4ca5-a03c-28de68fbe97d', state: DomainState.running },
    { name: 'g2', uuid: '11111111-2222-3333-4444-555555555555', state: DomainState.shutOff },
  ]);
  assert.deepEqual(
    (await conn.listAllDomains({ states: [DomainState.running] })).map((d) => d.name),
    ['g1'],
  );
  assert.equal(calls.length, 2);
});

test('domainGetInfo reads domstats, domainGetJobStats reads raw job stats', async () => {
  const { runner } = fakeRunner({
    domstats: {
      stdout:
        "Domain: 'g1'\n  state.state=3\n  state.reason=1\n  cpu.time=4310000000\n  balloon.current=65536\n" +
        '  balloon.maximum=131072\n  vcpu.current=2\n  vcpu.maximum=2\n',
    },
    domjobinfo: { stdout: 'Job type: 2\n\noperation: 1\ntime_elapsed: 115\ndata_remaining: 4096\n' },
  });
  const conn = new LibvirtConnection({ uri: URI, runner });
  assert.deepEqual(await conn.domainGetInfo({ name: 'g1' }), {
    state: DomainState.paused,
    vcpus: 2,
    maxMemoryKiB: 131072,
    memoryKiB: 65536,
    cpuTimeNs: 4310000000,
  });
  assert.deepEqual(await conn.domainGetJobStats({ name: 'g1' }), {
    type: DomainJobType.unbounded,
    stats: { operation: 1, time_elapsed: 115, data_remaining: 4096 },
  });
});

test('node info, free memory and memory stats', async () => {
  const { runner } = fakeRunner({
    nodeinfo: {
      stdout:
        'CPU model:           x86_64\nCPU(s):              2\nCPU frequency:       2596 MHz\nCPU socket(s):       1\n' +
        'Core(s) per socket:  2\nThread(s) per core:  1\nNUMA cell(s):        1\nMemory size:         8612056 KiB\n',
    },
    freecell: { stdout: 'Total: 3634736 KiB\n' },
    nodememstats: {
      stdout:
        'total  :             24684096 KiB\nfree   :             19706492 KiB\nbuffers:                38744 KiB\n' +
        'cached :              4016288 KiB\n',
    },
  });
  const conn = new LibvirtConnection({ uri: URI, runner });
  assert.deepEqual(await conn.nodeGetInfo(), {
    model: 'x86_64',
    cpus: 2,
    mhz: 2596,
    numaNodes: 1,
    sockets: 1,
    cores: 2,
    threads: 1,
    memoryKiB: 8612056,
  });
  assert.equal(await conn.nodeGetFreeMemory(), 3634736 * 1024);
  assert.deepEqual(await conn.nodeGetMemoryStats(), {
    totalKiB: 24684096,
    freeKiB: 19706492,
    buffersKiB: 38744,
    cachedKiB: 4016288,
  });
});

test('shutdownOrDestroy destroys a guest that ignores ACPI, and is idempotent when off', async () => {
  const { runner, calls } = fakeRunner({
    shutdown: {},
    domstate: { stdout: 'running\n' },
    destroy: {},
  });
  const conn = new LibvirtConnection({ uri: URI, runner });
  assert.deepEqual(await conn.domainShutdownOrDestroy({ name: 'g1', timeoutMs: 30, pollIntervalMs: 5 }), {
    outcome: ShutdownOutcome.destroyed,
  });
  assert.equal(calls.at(-1)?.args[2], 'destroy');

  const off = fakeRunner({
    shutdown: failing(
      "error: Failed to shutdown domain 'g1'\nerror: Requested operation is not valid: domain is not running\n",
    ),
  });
  const offConn = new LibvirtConnection({ uri: URI, runner: off.runner });
  assert.deepEqual(await offConn.domainShutdownOrDestroy({ name: 'g1', timeoutMs: 30 }), {
    outcome: ShutdownOutcome.alreadyOff,
  });

  const polite = fakeRunner({ shutdown: {}, domstate: [{ stdout: 'running\n' }, { stdout: 'shut off\n' }] });
  const politeConn = new LibvirtConnection({ uri: URI, runner: polite.runner });
  assert.deepEqual(await politeConn.domainShutdownOrDestroy({ name: 'g1', timeoutMs: 5_000, pollIntervalMs: 1 }), {
    outcome: ShutdownOutcome.shutdown,
  });
});

test('undefine passes typed flags and refuses unknown ones', async () => {
  const { runner, calls } = fakeRunner({ undefine: {} });
  const conn = new LibvirtConnection({ uri: URI, runner });
  await conn.domainUndefine({ name: 'g1', flags: ['nvram', 'managed-save'] });
  assert.deepEqual(calls[0]?.args.slice(2), ['undefine', '--domain', 'g1', '--nvram', '--managed-save']);
  await assert.rejects(conn.domainUndefine({ name: 'g1', flags: ['remove-all-storage' as 'nvram'] }), LibvirtError);
});

test('parses virsh event lines', () => {
  assert.deepEqual(
    parseEventLine("2026-11-22 11:06:54.046+0000: event 'lifecycle' for domain 'g1': Suspended Paused"),
    {
      type: 'lifecycle',
      domain: 'g1',
      timestamp: new Date('2026-11-22T11:06:54.046Z'),
      detail: 'Suspended Paused',
      lifecycle: { event: 'suspended', detail: 'Paused' },
    },
  );
  assert.deepEqual(
    parseEventLine(
      "2026-11-22 11:06:56.953+0000: event 'lifecycle' for domain 'g1': Shutdown Finished after host request",
    )?.lifecycle,
    { event: 'shutdown', detail: 'Finished after host request' },
  );
  const reboot = parseEventLine("2026-11-22 11:06:54.625+0100: event 'reboot' for domain 'g1'");
  assert.equal(reboot?.type, 'reboot');
  assert.equal(reboot?.timestamp.toISOString(), '2026-11-22T10:06:54.625Z');
  assert.equal(reboot?.lifecycle, undefined);
  assert.equal(parseEventLine('event loop interrupted'), undefined);
});

test('the event stream yields events, becomes ready, and ends on close', async () => {
  const { runner } = fakeRunner(
    {},
    {
      lines: [
        'novacron-events-ready',
        "2026-11-22 11:06:54.046+0000: event 'lifecycle' for domain 'g1': Started Booted",
        "2026-11-22 11:06:55.046+0000: event 'lifecycle' for domain 'g1': Stopped Destroyed",
      ],
    },
  );
  const stream = new LibvirtConnection({ uri: URI, runner }).domainEvents();
  await stream.ready;
  const seen: string[] = [];
  for await (const event of stream) {
    seen.push(event.lifecycle?.event ?? event.type);
    if (seen.length === 2) await stream.close();
  }
  assert.deepEqual(seen, ['started', 'stopped']);
});

test('the event stream fails with ConnectionLost when virsh dies', async () => {
  const { runner } = fakeRunner(
    {},
    { lines: ['novacron-events-ready'], stderr: 'error: internal error: client socket is closed\n' },
  );
  const stream = new LibvirtConnection({ uri: URI, runner }).domainEvents();
  await stream.ready;
  await assert.rejects(async () => {
    for await (const _ of stream) assert.fail('no event expected');
  }, LibvirtConnectionLostError);
});
