/**
 * `scripts/haproxy-config.ts`: the checked-in example is what the script writes, HAProxy accepts
 * what it writes (when HAProxy is installed), and bad arguments are refused with a clear message.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { haproxyConfig } from '../../scripts/haproxy-config.ts';

const ROOT = resolve(fileURLToPath(import.meta.url), '../../..');

const HAPROXY = '/usr/sbin/haproxy';
const EXAMPLE = {
  listen: ['0.0.0.0:8080'],
  hubs: ['10.0.0.11:8080', '10.0.0.12:8080', '10.0.0.13:8080'],
};

describe('haproxy config', () => {
  test('deploy/haproxy.cfg is what the script writes for its documented arguments', () => {
    assert.equal(readFileSync(join(ROOT, 'deploy/haproxy.cfg'), 'utf8'), haproxyConfig(EXAMPLE));
  });

  test('every hub is in both backends, the data channel backend tracking the main one', () => {
    const text = haproxyConfig(EXAMPLE);
    EXAMPLE.hubs.forEach((h, i) => {
      assert.ok(text.includes(`server hub${i + 1} ${h} id ${i + 1} cookie hub${i + 1}`));
      assert.ok(text.includes(`server hub${i + 1} ${h} id ${i + 1} track hubs/hub${i + 1}`));
    });
    assert.match(text, /use_backend hubs_data if \{ path \/worker-data \}/);
    assert.match(text, /option httpchk GET \/api\/health/);
    assert.match(text, /timeout tunnel 1h/);
    // A frozen hub (accepting, never answering) fails its checks within the check interval.
    assert.match(text, /timeout check 2000ms\n {2}default-server check inter 2000 /);
  });

  test('TLS: a secure cookie and an ssl bind; refused without a certificate', () => {
    const text = haproxyConfig({ ...EXAMPLE, tlsListen: ['0.0.0.0:443'], cert: '/etc/haproxy/hub.pem' });
    assert.match(text, /bind 0\.0\.0\.0:443 ssl crt \/etc\/haproxy\/hub\.pem/);
    assert.match(text, /cookie SHARDHUB_HUB insert indirect nocache httponly secure/);
    assert.throws(() => haproxyConfig({ ...EXAMPLE, tlsListen: ['0.0.0.0:443'] }), /needs --cert/);
  });

  test('bad arguments are refused with a clear message', () => {
    assert.throws(() => haproxyConfig({ listen: ['0.0.0.0:8080'], hubs: [] }), /at least one --hub/);
    assert.throws(() => haproxyConfig({ listen: [], hubs: ['a:1'] }), /--listen or --tls-listen/);
    assert.throws(
      () => haproxyConfig({ listen: ['0.0.0.0:8080'], hubs: ['10.0.0.1:80\n  server evil 6.6.6.6:80'] }),
      /--hub must be host:port/,
    );
    assert.throws(() => haproxyConfig({ ...EXAMPLE, maxconn: -1 }), /--maxconn/);
  });

  test(
    'HAProxy accepts the configuration',
    { skip: !existsSync(HAPROXY) && `${HAPROXY} is not installed` },
    () => {
      const dir = mkdtempSync(join(tmpdir(), 'shardhub-haproxy-'));
      try {
        const file = join(dir, 'haproxy.cfg');
        writeFileSync(file, haproxyConfig({ ...EXAMPLE, maxconn: 1000 }));
        const r = spawnSync(HAPROXY, ['-c', '-f', file], { encoding: 'utf8' });
        assert.equal(r.status, 0, `${r.stdout}${r.stderr}`);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    },
  );
});
