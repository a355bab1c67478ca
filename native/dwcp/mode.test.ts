import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import {
  DwcpMode,
  MODE_PARAMETERS,
  chooseStreamCount,
  classifyMode,
  probeLink,
  resolveTransferParameters,
} from './mode';
import { createTestPki } from './testing/fixtures';
import { startTcpProxy, type TcpProxy } from './testing/tcp-proxy';
import { DwcpReceiver } from './receiver';

test('datacenter needs both a short RTT and more than 1 Gbit/s', () => {
  assert.equal(classifyMode({ rttMs: 0.3, bandwidthMbps: 10_000 }), DwcpMode.DATACENTER);
  assert.equal(classifyMode({ rttMs: 9.9, bandwidthMbps: 1001 }), DwcpMode.DATACENTER);
  assert.equal(classifyMode({ rttMs: 10, bandwidthMbps: 10_000 }), DwcpMode.HYBRID);
});

test('internet is a long RTT or a slow link', () => {
  assert.equal(classifyMode({ rttMs: 80, bandwidthMbps: 10_000 }), DwcpMode.INTERNET);
  assert.equal(classifyMode({ rttMs: 1, bandwidthMbps: 100 }), DwcpMode.INTERNET);
  assert.equal(classifyMode({ rttMs: 50.1, bandwidthMbps: 5000 }), DwcpMode.INTERNET);
});

test('everything between is hybrid', () => {
  assert.equal(classifyMode({ rttMs: 30, bandwidthMbps: 2000 }), DwcpMode.HYBRID);
  assert.equal(classifyMode({ rttMs: 50, bandwidthMbps: 1000 }), DwcpMode.HYBRID);
  assert.equal(classifyMode({ rttMs: 5, bandwidthMbps: 1000 }), DwcpMode.HYBRID);
});

test('a configured override wins over the measurement', () => {
  assert.equal(classifyMode({ rttMs: 200, bandwidthMbps: 10, override: DwcpMode.DATACENTER }), DwcpMode.DATACENTER);
});

test('stream count covers the bandwidth-delay product within the mode bounds', () => {
  assert.equal(chooseStreamCount({ mode: DwcpMode.DATACENTER, rttMs: 0.5, bandwidthMbps: 10_000 }), 2);
  // 1 Gbit/s at 200 ms is 25 MB in flight: seven 4 MiB windows, but internet mode starts at eight.
  assert.equal(chooseStreamCount({ mode: DwcpMode.INTERNET, rttMs: 200, bandwidthMbps: 999 }), 8);
  // 10 Gbit/s at 100 ms needs 30 windows.
  assert.equal(chooseStreamCount({ mode: DwcpMode.INTERNET, rttMs: 100, bandwidthMbps: 10_000 }), 30);
  assert.equal(
    chooseStreamCount({ mode: DwcpMode.INTERNET, rttMs: 300, bandwidthMbps: 40_000 }),
    MODE_PARAMETERS.internet.maxStreams,
  );
});

test('parameters come from the mode row, with the level from the CPU rule when CPU speed is known', () => {
  const dc = resolveTransferParameters({ rttMs: 0.2, bandwidthMbps: 25_000, cpuMBpsAtLevel1: 400, workers: 2 });
  assert.equal(dc.mode, DwcpMode.DATACENTER);
  assert.equal(dc.compressionLevel, 0, 'a 25 Gbit/s link outruns two cores of zstd');
  assert.equal(dc.chunkAvgBytes, MODE_PARAMETERS.datacenter.chunkAvgBytes);
  const wan = resolveTransferParameters({ rttMs: 80, bandwidthMbps: 50, cpuMBpsAtLevel1: 400, workers: 2 });
  assert.equal(wan.mode, DwcpMode.INTERNET);
  assert.ok(wan.compressionLevel >= 6, `level ${wan.compressionLevel}`);
  const table = resolveTransferParameters({ rttMs: 30, bandwidthMbps: 2000 });
  assert.equal(table.compressionLevel, MODE_PARAMETERS.hybrid.compressionLevel);
});

test('the probe measures RTT and throughput against a receiver over mutual TLS', async () => {
  const dir = await mkdtemp(path.join(tmpdir(), 'dwcp-probe-'));
  const pki = await createTestPki({ dir });
  const receiver = await DwcpReceiver.start({ tls: pki.receiver, host: '127.0.0.1' });
  try {
    const result = await probeLink({
      host: '127.0.0.1',
      port: receiver.port,
      tls: pki.sender,
      pings: 5,
      durationMs: 300,
      streams: 2,
    });
    // Only lower bounds: load on a shared machine stretches a loopback RTT and shrinks its throughput at will.
    assert.ok(result.rttMs > 0, `rtt ${result.rttMs}`);
    assert.ok(result.bandwidthMbps > 10, `bandwidth ${result.bandwidthMbps}`);
    // Every stream sent at least one 64 KiB probe frame, and the receiver counted whole frames.
    assert.ok(result.bytes >= 2 * 65536 && result.bytes % 65536 === 0, `bytes ${result.bytes}`);
  } finally {
    await receiver.close();
    await rm(dir, { recursive: true, force: true });
  }
});

/**
 * A TCP proxy that holds every chunk for `delayMs` in each direction: a long link on loopback, since netem is not
 * available. At most 1 MiB waits per direction, so a bulk probe cannot pile up memory.
 */
function delayingProxy(input: { targetPort: number; delayMs: number }): Promise<TcpProxy> {
  return startTcpProxy({
    targetPort: input.targetPort,
    pipe: (from, to) => {
      let held = 0;
      from.on('data', (data: Buffer) => {
        held += data.length;
        if (held > 1 << 20) from.pause();
        // Timers of one duration fire in the order they were set, so the byte stream stays in order.
        setTimeout(() => {
          held -= data.length;
          to.write(data);
          if (held <= 1 << 20) from.resume();
        }, input.delayMs);
      });
    },
  });
}

test('the probed RTT includes the latency of the link, and a long link is not classified datacenter', async () => {
  const dir = await mkdtemp(path.join(tmpdir(), 'dwcp-probe-delay-'));
  const pki = await createTestPki({ dir });
  const receiver = await DwcpReceiver.start({ tls: pki.receiver, host: '127.0.0.1' });
  const proxy = await delayingProxy({ targetPort: receiver.port, delayMs: 25 });
  try {
    const result = await probeLink({
      host: '127.0.0.1',
      port: proxy.port,
      tls: pki.sender,
      pings: 5,
      durationMs: 200,
      streams: 1,
    });
    // Each round trip waits 25 ms in each direction; load can only add to that (1 ms slack per timer).
    assert.ok(result.rttMs >= 48, `rtt ${result.rttMs}`);
    assert.notEqual(classifyMode({ rttMs: result.rttMs, bandwidthMbps: result.bandwidthMbps }), DwcpMode.DATACENTER);
  } finally {
    await proxy.close();
    await receiver.close();
    await rm(dir, { recursive: true, force: true });
  }
});
