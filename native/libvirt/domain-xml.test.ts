import { test } from 'node:test';
import assert from 'node:assert/strict';

import { DomainSpecError, assertPathUnderRoot, buildDomainXml, parseNovaCronMetadata } from './domain-xml';
import type { DomainSpec } from './domain-xml';
import { childElement, childElements, parseXml, textContent } from './xml';
import type { XmlElement } from './xml';

const baseSpec: DomainSpec = {
  name: 'web-1',
  uuid: '6f1c2f9e-4b7a-4c1e-9d2a-0a1b2c3d4e5f',
  vcpus: 1,
  memoryMiB: 64,
  disks: [{ path: '/srv/images/web-1/root.qcow2', format: 'qcow2', target: 'vda' }],
  networks: [{ type: 'user', mac: '52:54:00:12:34:56' }],
  metadata: { vmId: 'vm-123', owner: 'team-a' },
  imageRoot: '/srv/images',
  domainType: 'qemu',
};

function child(parent: XmlElement, ...path: string[]): XmlElement {
  let node = parent;
  for (const name of path) {
    const next = childElement(node, name);
    assert.ok(next, `missing <${name}> under <${node.name}>`);
    node = next;
  }
  return node;
}

test('builds a domain that parses back with every field in place', () => {
  const root = parseXml(buildDomainXml(baseSpec));
  assert.equal(root.name, 'domain');
  assert.equal(root.attributes['type'], 'qemu');
  assert.equal(textContent(child(root, 'name')), 'web-1');
  assert.equal(textContent(child(root, 'uuid')), baseSpec.uuid);
  assert.equal(textContent(child(root, 'memory')), '64');
  assert.equal(child(root, 'memory').attributes['unit'], 'MiB');
  assert.equal(textContent(child(root, 'vcpu')), '1');
  const disk = child(root, 'devices', 'disk');
  assert.equal(child(disk, 'source').attributes['file'], '/srv/images/web-1/root.qcow2');
  assert.equal(child(disk, 'driver').attributes['type'], 'qcow2');
  assert.deepEqual(child(disk, 'target').attributes, { dev: 'vda', bus: 'virtio' });
  const nic = child(root, 'devices', 'interface');
  assert.equal(nic.attributes['type'], 'user');
  assert.equal(child(nic, 'mac').attributes['address'], '52:54:00:12:34:56');
});

test('no networks means no interface element', () => {
  const root = parseXml(buildDomainXml({ ...baseSpec, networks: [] }));
  assert.equal(childElements(child(root, 'devices'), 'interface').length, 0);
});

test('metadata lives in the NovaCron namespace and round-trips, escaped', () => {
  const metadata = { vmId: `vm-<'&">`, owner: 'a&b <c>', labels: { tier: '"gold" & <silver>', zone: 'z1' } };
  const xml = buildDomainXml({ ...baseSpec, metadata });
  assert.ok(!xml.includes('<c>'), 'metadata must not create elements');
  assert.ok(!xml.includes('"gold"'), 'quotes must be escaped in attributes');
  assert.deepEqual(parseNovaCronMetadata(xml), metadata);
  const instance = child(parseXml(xml), 'metadata', 'novacron:instance');
  assert.equal(instance.attributes['xmlns:novacron'], 'https://novacron.dev/xmlns/libvirt/domain/1');
});

test('metadata is found under whatever prefix libvirt re-serializes it with', () => {
  const xml = `<domain><name>x</name><metadata>
    <nc:instance xmlns:nc="https://novacron.dev/xmlns/libvirt/domain/1"><nc:vm-id>vm-9</nc:vm-id></nc:instance>
    <other:thing xmlns:other="urn:other"/></metadata></domain>`;
  assert.deepEqual(parseNovaCronMetadata(xml), { vmId: 'vm-9' });
  assert.equal(parseNovaCronMetadata('<domain><name>x</name></domain>'), undefined);
});

test('rejects unsafe domain names', () => {
  const bad = [
    '',
    '-rf',
    '.hidden',
    'a b',
    'a/b',
    '../etc',
    'x<y',
    'x>y',
    'x&y',
    `x'y`,
    'x"y',
    'x;rm -rf /',
    'x$(id)',
    'x`id`',
    'x|y',
    'x\ny',
    'a'.repeat(64),
    'ünïcode',
  ];
  for (const name of bad) {
    assert.throws(() => buildDomainXml({ ...baseSpec, name }), DomainSpecError, `name ${JSON.stringify(name)}`);
  }
  assert.doesNotThrow(() => buildDomainXml({ ...baseSpec, name: 'a'.repeat(63) }));
  assert.doesNotThrow(() => buildDomainXml({ ...baseSpec, name: 'Web_1.prod-2' }));
});

test('rejects disk paths outside the image root or with traversal, metacharacters, or odd forms', () => {
  const bad = [
    'relative/disk.qcow2',
    '/srv/images/../etc/shadow',
    '/srv/images/a/../../etc/passwd',
    '/srv/images/./a.qcow2',
    '/srv/images//a.qcow2',
    '/srv/images',
    '/srv/images/',
    '/srv/imagesX/a.qcow2',
    '/srv/images/dir/',
    '/etc/passwd',
    '/srv/images/a b.qcow2',
    '/srv/images/a;rm -rf.qcow2',
    '/srv/images/$(id).qcow2',
    '/srv/images/`id`.qcow2',
    "/srv/images/a'.qcow2",
    '/srv/images/a".qcow2',
    '/srv/images/a<b>.qcow2',
    '/srv/images/a&b.qcow2',
    '/srv/images/a\n.qcow2',
    '/srv/images/a|b.qcow2',
  ];
  for (const path of bad) {
    assert.throws(
      () => buildDomainXml({ ...baseSpec, disks: [{ path, format: 'qcow2', target: 'vda' }] }),
      DomainSpecError,
      `path ${JSON.stringify(path)}`,
    );
  }
});

test('the image root itself must be safe', () => {
  assert.throws(() => assertPathUnderRoot({ path: '/a/b', root: 'a' }), DomainSpecError);
  assert.throws(() => assertPathUnderRoot({ path: '/a/b/c', root: '/a/../a' }), DomainSpecError);
  assert.doesNotThrow(() => assertPathUnderRoot({ path: '/a/b/c', root: '/a/b/' }));
});

test('rejects invalid numbers, uuids, targets, formats, macs and duplicates', () => {
  const cases: Array<Partial<DomainSpec>> = [
    { uuid: 'not-a-uuid' },
    { uuid: '6F1C2F9E-4B7A-4C1E-9D2A-0A1B2C3D4E5F' },
    { vcpus: 0 },
    { vcpus: 1.5 },
    { memoryMiB: 8 },
    { memoryMiB: Number.NaN },
    { disks: [{ path: '/srv/images/a', format: 'qcow2', target: 'sda' }] },
    { disks: [{ path: '/srv/images/a', format: 'vmdk' as 'raw', target: 'vda' }] },
    {
      disks: [
        { path: '/srv/images/a', format: 'raw', target: 'vda' },
        { path: '/srv/images/b', format: 'raw', target: 'vda' },
      ],
    },
    {
      disks: [
        { path: '/srv/images/a', format: 'raw', target: 'vda' },
        { path: '/srv/images/a', format: 'raw', target: 'vdb' },
      ],
    },
    { networks: [{ type: 'user', mac: '52:54:00:12:34' }] },
    { networks: [{ type: 'bridge' as 'user' }] },
    { metadata: { vmId: '' } },
    { metadata: { vmId: 'a\u0000b' } },
    { metadata: { vmId: 'v', labels: { 'Bad Key': 'x' } } },
    { domainType: 'xen' as 'kvm' },
  ];
  for (const patch of cases) {
    assert.throws(() => buildDomainXml({ ...baseSpec, ...patch }), DomainSpecError, JSON.stringify(patch));
  }
});

test('parser refuses DTDs and malformed documents', () => {
  assert.throws(() => parseXml('<!DOCTYPE x [<!ENTITY a "b">]><x>&a;</x>'));
  assert.throws(() => parseXml('<a><b></a>'));
  assert.throws(() => parseXml('<a>&unknown;</a>'));
  assert.throws(() => parseXml('<a x="1" x="2"/>'));
  assert.throws(() => parseXml('<a>x & y</a>'));
  assert.equal(textContent(parseXml('<a>&#60;&#x3e;<![CDATA[<&>]]></a>')), '<><&>');
});

test('OEM strings become an SMBIOS sysinfo block that the firmware is told to use', () => {
  const plain = parseXml(buildDomainXml(baseSpec));
  assert.equal(childElement(plain, 'sysinfo'), undefined);
  assert.equal(childElement(child(plain, 'os'), 'smbios'), undefined);

  const root = parseXml(buildDomainXml({ ...baseSpec, oemStrings: ['novacron.dirty-mibps=200', 'a&b <c>'] }));
  const sysinfo = child(root, 'sysinfo');
  assert.equal(sysinfo.attributes['type'], 'smbios');
  assert.deepEqual(childElements(child(sysinfo, 'oemStrings'), 'entry').map(textContent), [
    'novacron.dirty-mibps=200',
    'a&b <c>',
  ]);
  assert.deepEqual(child(root, 'os', 'smbios').attributes, { mode: 'sysinfo' });
});

test('a console log path is the serial port log, replaced at each start', () => {
  assert.equal(childElement(child(parseXml(buildDomainXml(baseSpec)), 'devices', 'serial'), 'log'), undefined);
  const root = parseXml(buildDomainXml({ ...baseSpec, consoleLogPath: '/var/log/guests/web-1.console.log' }));
  assert.deepEqual(child(root, 'devices', 'serial', 'log').attributes, {
    file: '/var/log/guests/web-1.console.log',
    append: 'off',
  });
});

test('unsafe console log paths and OEM strings are refused', () => {
  for (const consoleLogPath of ['relative.log', '/a/../b.log', '/logs/', '/a b.log']) {
    assert.throws(() => buildDomainXml({ ...baseSpec, consoleLogPath }), DomainSpecError, consoleLogPath);
  }
  for (const oemStrings of [[''], ['line\nbreak'], ['x'.repeat(1025)], Array.from({ length: 65 }, () => 'x')]) {
    assert.throws(() => buildDomainXml({ ...baseSpec, oemStrings }), DomainSpecError);
  }
});
