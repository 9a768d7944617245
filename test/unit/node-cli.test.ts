/**
 * `shardhub node`: argument precedence and validation, and the real process (`native/main.ts`)
 * against a loopback hub: a refused join token exits 1 with a clear message, SIGTERM drains.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { nodeCommand, parseNodeArgs } from '../../native/cli.ts';
import { UsageError } from '../../server/options.ts';
import { FakeHub, range, waitFor } from './fake-hub.ts';
import { NODE_MALLOC_ENV, NODE_V8_FLAGS, nodeEnv } from '../../native/launch.ts';

const root = fileURLToPath(new URL('../..', import.meta.url));
let dir: string;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'shardhub-cli-'));
});
after(() => rm(dir, { recursive: true, force: true }));

function options(argv: string[], env: NodeJS.ProcessEnv = {}) {
  const parsed = parseNodeArgs(argv, env);
  assert.equal(parsed.help, false);
  return parsed.help ? undefined : parsed.options;
}

describe('shardhub node arguments', () => {
  it('takes flags over env over the config file over defaults', async () => {
    const config = join(dir, 'node.json');
    await writeFile(
      config,
      JSON.stringify({ hub: 'http://config:1', concurrency: 3, pool: 'cfg', name: 'from-config' }),
    );
    const env = { SHARDHUB_HUB: 'http://env:2', SHARDHUB_POOL: 'envpool' };
    const o = options(['--config', config, '--pool', 'flagpool'], env);
    assert.equal(o?.hub, 'http://env:2');
    assert.equal(o?.pool, 'flagpool');
    assert.equal(o?.concurrency, 3);
    assert.equal(o?.name, 'from-config');
    assert.equal(o?.backend, 'auto');
    const d = options(['--hub', 'http://h:9/'], {});
    assert.equal(d?.hub, 'http://h:9');
    assert.equal(d?.concurrency, 1);
    assert.equal(d?.dataChannel, undefined, 'default: runNode asks for a data channel');
    assert.equal(options(['--hub', 'http://h:9'], { SHARDHUB_DATA_CHANNEL: 'off' })?.dataChannel, false);
  });

  it('takes a list of hubs, each checked', () => {
    assert.deepEqual(options(['--hub', 'http://a:1, http://b:2/'])?.hub, ['http://a:1', 'http://b:2']);
    assert.deepEqual(options([], { SHARDHUB_HUB: 'http://a:1,https://b' })?.hub, ['http://a:1', 'https://b']);
    assert.throws(() => parseNodeArgs(['--hub', 'http://a:1,']), /--hub must be URLs separated by commas/);
    assert.throws(() => parseNodeArgs(['--hub', 'http://a:1,b:2']), /did you mean http:\/\/b:2/);
  });

  it('takes a local address to connect from, an IP address', () => {
    assert.equal(options(['--hub', 'http://h:9', '--local-address', '127.0.1.7'])?.localAddress, '127.0.1.7');
    assert.equal(options(['--hub', 'http://h:9'], { SHARDHUB_LOCAL_ADDRESS: '::1' })?.localAddress, '::1');
    assert.equal(options(['--hub', 'http://h:9'])?.localAddress, undefined);
    assert.throws(
      () => parseNodeArgs(['--hub', 'http://h:9', '--local-address', 'eth0']),
      /--local-address must be an IP address of this machine/,
    );
  });

  it('says precisely what is wrong', () => {
    const bad = (argv: string[], re: RegExp, env = {}) =>
      assert.throws(
        () => parseNodeArgs(argv, env),
        (e: unknown) => e instanceof UsageError && re.test((e as Error).message),
      );
    bad([], /--hub is required/);
    bad(['--hub', 'ftp://x'], /http:\/\/ or https:\/\/ URL/);
    bad(['--hub', 'http://x', '--concurrency', '0'], /--concurrency must be an integer >= 1/);
    bad(['--hub', 'http://x', '--concurrency', '1.5'], /--concurrency must be an integer >= 1/);
    bad(['--hub', 'http://x'], /SHARDHUB_CONCURRENCY must be an integer >= 1/, {
      SHARDHUB_CONCURRENCY: 'two',
    });
    bad(['--hub', 'http://x', '--backend', 'tpu'], /--backend must be one of auto, cpu, cuda, sim/);
    bad(['--hub', 'http://x', '--speed', '2'], /--speed applies only with --backend sim/);
    bad(['--hub', 'http://x', '--backend', 'sim', '--speed', '0'], /--speed must be a number > 0/);
    bad(['--hub', 'http://x', '--id', 'short'], /--id must be 8-64 characters/);
    bad(['--hub', 'http://x', '--nope'], /unknown option '--nope'/);
    bad(['--hub', 'localhost:8080'], /did you mean http:\/\/localhost:8080/);
    bad(['--hub', 'http://x', '--concurrency', '300'], /--concurrency must be an integer from 1 to 256/);
    bad(['--hub', 'http://x', '--data-channel', 'yes'], /--data-channel must be one of on, off/);
    bad(['--hub', 'http://x', '--corrupt-after', '3'], /apply only with --corrupt-rate/);
    bad(
      ['--hub', 'http://x', '--corrupt-rate', '1', '--corrupt-scale', '1'],
      /--corrupt-scale must be a number other than 1/,
    );
  });

  it('parses the fault flags: a subtle liar that turns after N honest items', () => {
    const argv = [
      '--hub',
      'http://x',
      '--corrupt-rate',
      '0.05',
      '--corrupt-after',
      '300',
      '--corrupt-scale',
      '1.05',
    ];
    assert.deepEqual(options(argv)?.corrupt, { rate: 0.05, after: 300, scale: 1.05 });
    assert.deepEqual(options(['--hub', 'http://x', '--corrupt-rate', '1'])?.corrupt, { rate: 1 });
    assert.equal(options(['--hub', 'http://x'])?.corrupt, undefined);
  });

  it('parses the sim flags', () => {
    const o = options(
      [
        '--hub',
        'http://x',
        '--backend',
        'sim',
        '--speed',
        '2',
        '--item-ms',
        '10',
        '--slow-at-s',
        '1',
        '--die-at-s',
        '3',
      ],
      {},
    );
    assert.deepEqual(o?.sim, { speed: 2, itemMs: 10, slowAtS: 1, slowFactor: undefined, dieAtS: 3 });
  });

  it('prints usage with examples for --help and exits 0; usage errors exit 2', async () => {
    let out = '';
    let err = '';
    const cio = {
      stdout: { write: (s: string) => (out += s) },
      stderr: { write: (s: string) => (err += s) },
      env: {},
    };
    assert.equal(await nodeCommand(['--help'], cio), 0);
    assert.match(out, /Usage: shardhub node --hub URL/);
    assert.match(out, /Examples:/);
    assert.equal(await nodeCommand(['--concurrency', 'x', '--hub', 'http://h'], cio), 2);
    assert.match(err, /--concurrency must be an integer >= 1/);
  });
});

/**
 * Spawns `native/main.ts` like the tests of the whole system do: with the node's V8 flags and malloc
 * settings, unless `relaunch`, when it is started as a user would start it and runs itself again
 * with them.
 */
function spawnNode(args: string[], relaunch = false) {
  const flags = relaunch ? [] : NODE_V8_FLAGS;
  const child = spawn(process.execPath, ['--import', 'tsx', ...flags, 'native/main.ts', ...args], {
    cwd: root,
    env: (relaunch ? (e: NodeJS.ProcessEnv) => e : nodeEnv)({
      ...process.env,
      SHARDHUB_LOG_LEVEL: relaunch ? 'info' : 'warn',
      SHARDHUB_JOIN_TOKEN: '',
    }),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  let stdout = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  const exit = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  return { child, exit, stderr: () => stderr, stdout: () => stdout };
}

describe('shardhub node process', () => {
  for (const checkTokenAt of ['connect', 'register'] as const) {
    it(`exits 1 with a clear message when the hub refuses the join token (at ${checkTokenAt})`, async () => {
      const hub = new FakeHub({ joinToken: 'good-token', checkTokenAt });
      await hub.listen();
      try {
        const node = spawnNode([
          '--hub',
          hub.url,
          '--token',
          'bad-token',
          '--backend',
          'sim',
          '--state',
          dir,
          '--cache',
          dir,
        ]);
        const code = await Promise.race([
          node.exit,
          new Promise((r) => setTimeout(() => r('timeout'), 15_000)),
        ]);
        if (code === 'timeout') node.child.kill('SIGKILL');
        assert.equal(code, 1);
        assert.match(node.stderr(), /refused this node's join token \(.*\).*--token/);
        assert.equal(hub.registers.length, 0);
      } finally {
        await hub.close();
      }
    });
  }

  it('drains on SIGTERM: unstarted items go back, the running one finishes, exit 0', async () => {
    const hub = new FakeHub({ joinToken: 'good-token' });
    await hub.listen();
    // Started without the node's V8 flags, as a user starts it: the node runs in a child that has
    // them, and the SIGTERM sent to the parent reaches it.
    const node = spawnNode(
      [
        ...['--hub', hub.url, '--token', 'good-token', '--backend', 'sim', '--item-ms', '300'],
        ...['--id', 'cli-test-node', '--state', dir, '--cache', join(dir, 'models')],
      ],
      true,
    );
    try {
      await waitFor('registration', () => hub.registers.length === 1, 15_000);
      assert.equal(hub.registers[0]?.auth.workerId, 'cli-test-node');
      hub.assign(range(1, 4));
      await waitFor('item 1 running', () => hub.heartbeats.some((h) => h.running === 1));
      const started = /"pid":(\d+)[^\n]*"msg":"starting node"/.exec(node.stdout());
      assert.ok(started, 'the node logs its start');
      const child = Number(started[1]);
      assert.notEqual(child, node.child.pid, 'the node runs in a child process');
      // ... which has the node's V8 flags and malloc settings (Linux's view of the process).
      const cmdline = readFileSync(`/proc/${child}/cmdline`, 'utf8').split('\0');
      for (const f of NODE_V8_FLAGS) assert.ok(cmdline.includes(f), `the child runs with ${f}`);
      const environ = readFileSync(`/proc/${child}/environ`, 'utf8').split('\0');
      for (const [k, v] of Object.entries(NODE_MALLOC_ENV)) {
        assert.ok(environ.includes(`${k}=${v}`), `the child's environment has ${k}=${v}`);
      }
      node.child.kill('SIGTERM');
      assert.equal(await node.exit, 0, node.stderr());
      assert.deepEqual(hub.resultIds(), [1]);
      assert.deepEqual(hub.released.sort(), [2, 3, 4]);
    } finally {
      node.child.kill('SIGKILL');
      await hub.close();
    }
  });
});

describe('one identity per running node', () => {
  it('a second node on the default identity runs as a worker of its own; with the same --id it refuses', async () => {
    const hub = new FakeHub({ joinToken: 'good-token' });
    await hub.listen();
    const state = join(dir, 'shared-state');
    const args = [
      '--hub',
      hub.url,
      '--token',
      'good-token',
      '--backend',
      'sim',
      '--state',
      state,
      '--cache',
      join(state, 'm'),
    ];
    const first = spawnNode(args);
    const second = spawnNode(args);
    try {
      await waitFor('two registrations', () => hub.registers.length >= 2, 20_000);
      const ids = new Set(hub.registers.map((r) => r.auth.workerId));
      assert.equal(ids.size, 2, `two workers, not one swapped over: ${[...ids].join(', ')}`);
      const fixed = [...args, '--id', 'fixed-node-1'];
      const a = spawnNode(fixed);
      await waitFor(
        'the fixed node',
        () => hub.registers.some((r) => r.auth.workerId === 'fixed-node-1'),
        20_000,
      );
      const b = spawnNode(fixed);
      assert.equal(await b.exit, 1);
      assert.match(
        b.stderr(),
        /another node \(pid \d+\) on this machine already runs as worker fixed-node-1/,
      );
      a.child.kill('SIGKILL');
    } finally {
      first.child.kill('SIGKILL');
      second.child.kill('SIGKILL');
      await hub.close();
    }
  });
});
