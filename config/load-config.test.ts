import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, test } from 'node:test';
import { classifyMode, DEFAULT_MODE_THRESHOLDS, DwcpMode } from '../native/dwcp/mode';
import { checkConfigFile, ConfigError, loadConfig } from './load-config';

function yamlFile(text: string): string {
  const file = path.join(mkdtempSync(path.join(os.tmpdir(), 'novacron-config-')), 'novacron.yaml');
  writeFileSync(file, text);
  return file;
}

describe('loadConfig', () => {
  test('merges the profile over the base file and resolves the data dir', () => {
    const config = loadConfig({ env: {}, cwd: '/srv/novacron' });
    assert.equal(config.system.profile, 'datacenter');
    assert.equal(config.dwcp.mode, 'datacenter');
    assert.equal(config.dwcp.consensus.leaseTtlSeconds, 10);
    assert.equal(config.dwcp.compression.level, 'auto');
    assert.equal(config.system.dataDir, '/srv/novacron/.novacron/data');
    assert.equal(config.api.port, 8080);
  });

  test('the internet profile selects internet mode and a longer lease', () => {
    const config = loadConfig({ env: { NOVACRON_PROFILE: 'internet' } });
    assert.equal(config.dwcp.mode, 'internet');
    assert.equal(config.dwcp.consensus.leaseTtlSeconds, 30);
  });

  test('shortcut and general env overrides reach nested keys with their types', () => {
    const config = loadConfig({
      env: {
        NOVACRON_NODE_ID: 'edge-7',
        NOVACRON_DATA_DIR: '/var/lib/novacron',
        NOVACRON_LOG_LEVEL: 'debug',
        NOVACRON_DWCP_MODE: 'hybrid',
        NOVACRON_API_PORT: '9090',
        NOVACRON_TEMPORAL_EMBEDDED_UI_PORT: '0',
        NOVACRON_DWCP_TRANSPORT_RATE_LIMIT_MBPS: '250',
        NOVACRON_CLUSTER_INIT_DISABLED_COMPONENTS: 'onnx-runtime,resources',
        NOVACRON_API_URL: 'http://ignored-by-the-stack',
        DATABASE_URL: 'postgres://u:p@db:5432/novacron',
        TEMPORAL_ADDRESS: 'temporal:7233',
      },
    });
    assert.equal(config.system.nodeId, 'edge-7');
    assert.equal(config.system.dataDir, '/var/lib/novacron');
    assert.equal(config.system.logLevel, 'debug');
    assert.equal(config.dwcp.mode, 'hybrid');
    assert.equal(config.api.port, 9090);
    assert.equal(config.temporal.embedded.uiPort, 0);
    assert.equal(config.dwcp.transport.rateLimitMbps, 250);
    assert.deepEqual(config.clusterInit.disabledComponents, ['onnx-runtime', 'resources']);
    assert.equal(config.storage.databaseUrl, 'postgres://u:p@db:5432/novacron');
    assert.equal(config.temporal.address, 'temporal:7233');
  });

  test('an out-of-range env value names the key and the variable', () => {
    assert.throws(
      () => loadConfig({ env: { NOVACRON_API_PORT: '70000' } }),
      (err: unknown) =>
        err instanceof ConfigError && err.message.includes('api.port') && err.message.includes('NOVACRON_API_PORT'),
    );
  });

  test('a non-numeric env value for a number key is refused in one line', () => {
    assert.throws(
      () => loadConfig({ env: { NOVACRON_API_PORT: 'eighty' } }),
      /NOVACRON_API_PORT: expected a number, got "eighty"/,
    );
  });

  test('an env var naming no key of a known section is refused', () => {
    assert.throws(
      () => loadConfig({ env: { NOVACRON_API_PROT: '1' } }),
      /NOVACRON_API_PROT: no config key api\.\* matches/,
    );
  });

  test('an unknown key in a file names the key', () => {
    const file = yamlFile('api:\n  prot: 8080\n');
    assert.throws(
      () => loadConfig({ env: {}, file }),
      (err: unknown) => {
        assert.ok(err instanceof ConfigError);
        assert.match(err.message, /api\.prot: unknown key/);
        assert.equal(err.message.split('\n').length, 1);
        return true;
      },
    );
  });

  test('a wrong type in a file names the key and the file', () => {
    // A key the schema knows, so the type check (not the unknown-key check) is what refuses it.
    const file = yamlFile('dwcp:\n  transport:\n    rateLimitMbps: fast\n');
    assert.throws(
      () => loadConfig({ env: {}, file }),
      (err: unknown) => {
        assert.ok(err instanceof ConfigError);
        assert.ok(err.message.startsWith(`invalid config (${file}): dwcp.transport.rateLimitMbps: `), err.message);
        assert.match(err.message, /expected number, received string$/);
        return true;
      },
    );
  });

  test('an unsafe node id is refused', () => {
    assert.throws(
      () => loadConfig({ env: { NOVACRON_NODE_ID: 'node;rm -rf /' } }),
      /system\.nodeId: must be lowercase/,
    );
  });

  test('an unknown profile is refused', () => {
    assert.throws(
      () => loadConfig({ env: { NOVACRON_PROFILE: 'moon' } }),
      /system\.profile: must be one of datacenter, internet, hybrid/,
    );
  });

  test('broken YAML reports the line', () => {
    const file = yamlFile('api:\n  port: [8080\n');
    assert.throws(() => loadConfig({ env: {}, file }), /invalid YAML/);
  });

  test('config check accepts a valid file and reports a missing one', () => {
    const file = yamlFile('system:\n  profile: hybrid\n');
    assert.equal(checkConfigFile(file).system.profile, 'hybrid');
    assert.throws(() => checkConfigFile('/nonexistent/novacron.yaml'), /no such file/);
  });
});

describe('network thresholds for DWCP mode detection', () => {
  test('default to the thresholds mode detection uses without config', () => {
    assert.deepEqual(loadConfig({ env: {} }).network, DEFAULT_MODE_THRESHOLDS);
  });

  test('move where a probed link counts as datacenter', () => {
    const link = { rttMs: 20, bandwidthMbps: 5000 };
    const config = loadConfig({ env: { NOVACRON_NETWORK_DATACENTER_MAX_RTT_MS: '25' } });
    assert.equal(config.network.datacenterMaxRttMs, 25);
    assert.equal(classifyMode({ ...link, thresholds: config.network }), DwcpMode.DATACENTER);
    assert.equal(classifyMode({ ...link, thresholds: loadConfig({ env: {} }).network }), DwcpMode.HYBRID);
  });

  test('an internet threshold below the datacenter one is refused', () => {
    assert.throws(
      () => loadConfig({ env: { NOVACRON_NETWORK_DATACENTER_MAX_RTT_MS: '60' } }),
      /network\.internetMinRttMs: internetMinRttMs must be at least datacenterMaxRttMs/,
    );
  });
});

test('removed keys that nothing read are refused, not ignored', () => {
  for (const text of ['dwcp:\n  consensus:\n    quorum: majority\n', 'network:\n  probeIntervalSeconds: 30\n']) {
    assert.throws(() => loadConfig({ env: {}, file: yamlFile(text) }), /(quorum|probeIntervalSeconds): unknown key/);
  }
});

describe('storage pools from the environment', () => {
  test('NOVACRON_AGENT_STORAGE_POOLS takes name=path pairs or a JSON object', () => {
    const pairs = loadConfig({ env: { NOVACRON_AGENT_STORAGE_POOLS: 'shared=/srv/pools/shared, nfs-1=/mnt/nfs1' } });
    assert.deepEqual(pairs.agent.storagePools, { shared: '/srv/pools/shared', 'nfs-1': '/mnt/nfs1' });
    const json = loadConfig({ env: { NOVACRON_AGENT_STORAGE_POOLS: '{"shared":"/srv/pools/shared"}' } });
    assert.deepEqual(json.agent.storagePools, { shared: '/srv/pools/shared' });
    assert.deepEqual(loadConfig({ env: { NOVACRON_AGENT_STORAGE_POOLS: '' } }).agent.storagePools, {});
    assert.deepEqual(loadConfig({ env: {} }).agent.storagePools, {});
  });

  test('a malformed or invalid pool list is refused naming the variable', () => {
    assert.throws(
      () => loadConfig({ env: { NOVACRON_AGENT_STORAGE_POOLS: 'shared' } }),
      /NOVACRON_AGENT_STORAGE_POOLS: expected name=value pairs, got "shared"/,
    );
    assert.throws(
      () => loadConfig({ env: { NOVACRON_AGENT_STORAGE_POOLS: 'a=/x,a=/y' } }),
      /NOVACRON_AGENT_STORAGE_POOLS: a is given twice/,
    );
    assert.throws(
      () => loadConfig({ env: { NOVACRON_AGENT_STORAGE_POOLS: '{"shared": 1}' } }),
      /NOVACRON_AGENT_STORAGE_POOLS: expected a JSON object of strings/,
    );
    assert.throws(
      () => loadConfig({ env: { NOVACRON_AGENT_STORAGE_POOLS: 'shared=relative/dir' } }),
      /invalid config \(NOVACRON_AGENT_STORAGE_POOLS\): agent\.storagePools\.shared: must be absolute/,
    );
    assert.throws(
      () => loadConfig({ env: { NOVACRON_AGENT_STORAGE_POOLS: 'local=/srv/x' } }),
      /NOVACRON_AGENT_STORAGE_POOLS.*local is every host's own image root/,
    );
  });
});
