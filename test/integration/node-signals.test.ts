/**
 * Ctrl-C and SIGTERM reach a busy native node started the README's way, `npm run shardhub -- node
 * ...`, through npm, its shell and the node's relaunched child: the node drains once and exits,
 * without a second signal quitting it early and without onnxruntime aborting (`Napi::Error`). Also
 * with its output piped through `tee` (Ctrl-C kills tee too), and with SIGTERM sent to the npm
 * process alone, as a supervisor does. The node runs real onnxruntime sessions (PaddleOCR
 * detection, about half a second an item here), so it is busy when the signal comes.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { packTensors } from '../../protocol/pack.ts';
import type { HubServer } from '../../server/app.ts';
import { calibrationInputs } from '../../worker/calibration.ts';
import { NODE_V8_FLAGS, nodeEnv } from '../../native/launch.ts';
import { killProcessesWith, ROOT, Rest, startHub, tempDir, waitFor } from '../helpers/grid.ts';

/** Starts `npm run shardhub -- node ...` (optionally `| tee FILE`) in a process group of its own, as a terminal does. */
function npmNode(hub: HubServer, stateDir: string, name: string, tee?: string) {
  const args = [
    ...['--hub', hub.url, '--token', hub.tokens.joinToken, '--backend', 'cpu'],
    ...['--state', stateDir, '--cache', join(stateDir, 'cache'), '--name', name],
  ];
  const cmd = `npm run --silent shardhub -- node ${args.join(' ')}${tee ? ` 2>&1 | tee ${tee}` : ''}`;
  const child = spawn('sh', ['-c', tee ? cmd : `exec ${cmd}`], {
    cwd: ROOT,
    detached: true,
    env: { ...process.env, SHARDHUB_LOG_LEVEL: 'info', SHARDHUB_LOG_FORMAT: 'json' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | string | null>((ok) =>
    child.once('exit', (code, signal) => ok(code ?? signal)),
  );
  started.push(child.pid as number);
  return { child, exited, output: () => out };
}

/** Process groups started here: killed after the tests, whatever became of them. */
const started: number[] = [];

/** How many log lines carry this message. */
const count = (log: string, msg: string) =>
  log.split('\n').filter((l) => l.includes(`"msg":"${msg}"`)).length;

describe('signals to a node started with npm run', { timeout: 240_000 }, () => {
  const tmp = tempDir();
  let hub: HubServer;
  let rest: Rest;

  before(async () => {
    hub = await startHub(join(tmp.dir, 'hub'));
    rest = new Rest(hub.url, hub.tokens.operatorToken);
  });
  after(async () => {
    for (const pid of started) {
      try {
        process.kill(-pid, 'SIGKILL');
      } catch {
        /* already gone */
      }
    }
    killProcessesWith(tmp.dir); // a relaunched node is in a group of its own
    await hub.close();
    tmp.cleanup();
  });

  /**
   * Queues PaddleOCR detection items and waits until the node runs them. Each test's node has a
   * name of its own, and only an online worker counts: the hub keeps an earlier test's node as an
   * offline worker with the `running` of its last heartbeat, which would otherwise send the signal
   * before this node has even started.
   */
  async function busy(workerName: string): Promise<string> {
    const model = hub.hub.models.byName('ppocr-det');
    assert.ok(model, 'ppocr-det is bundled');
    const items = Array.from({ length: 40 }, (_, i) => ({
      name: `i${i}`,
      tensors: calibrationInputs(model, 100 + i),
    }));
    const jobId = await rest.submit('ppocr-det', items);
    void packTensors;
    await waitFor(
      'the node running items',
      () =>
        [...hub.hub.workers.values()].some(
          (w) => w.name === workerName && w.state !== 'offline' && w.running > 0,
        ),
      120_000,
      100,
    );
    return jobId;
  }

  async function stopped(p: ReturnType<typeof npmNode>, within: number): Promise<number | string | null> {
    const code = await Promise.race([
      p.exited,
      new Promise<'hung'>((ok) => setTimeout(() => ok('hung'), within)),
    ]);
    if (code === 'hung') {
      process.kill(-(p.child.pid as number), 'SIGKILL');
      assert.fail(`the node did not exit within ${within} ms:\n${p.output().slice(-3000)}`);
    }
    return code;
  }

  function assertDrainedOnce(log: string): void {
    assert.equal(count(log, 'draining'), 1, `one drain:\n${log.slice(-3000)}`);
    assert.equal(count(log, 'exiting now'), 0, `no second signal quit the node:\n${log.slice(-3000)}`);
    assert.doesNotMatch(log, /Napi::Error|terminate called|Aborted|core dumped/, 'no abort');
  }

  test('Ctrl-C (SIGINT to the process group) drains the busy node once; it exits 0', async () => {
    const p = npmNode(hub, join(tmp.dir, 'a'), 'signals-a');
    await busy('signals-a');
    process.kill(-(p.child.pid as number), 'SIGINT');
    const code = await stopped(p, 60_000);
    assertDrainedOnce(p.output());
    assert.equal(count(p.output(), 'worker closed'), 1, 'the node closed after its drain');
    // The hub stops planning items for a draining node: the node hands back its queue once, and at
    // most once more what was already on its way when the hub heard of the drain.
    assert.ok(count(p.output(), 'releasing unstarted items') <= 2, p.output().slice(-2000));
    assert.equal(count(p.output(), 'release not acknowledged'), 0, 'the drain waited for the release');
    assert.doesNotMatch(p.output(), /"level":(40|50)/, 'a clean drain logs no warning or error');
    // npm itself ends on the terminal's Ctrl-C as well, by the signal; the node exited 0 under it.
    assert.ok(code === 0 || code === 'SIGINT', `exit ${code}`);
    await waitFor('the node offline', () =>
      [...hub.hub.workers.values()].every((w) => w.name !== 'signals-a' || w.state === 'offline'),
    );
  });

  test('with its output piped through tee, Ctrl-C drains and the node exits (no hang)', async () => {
    const file = join(tmp.dir, 'node.log');
    const p = npmNode(hub, join(tmp.dir, 'b'), 'signals-b', file);
    await busy('signals-b');
    process.kill(-(p.child.pid as number), 'SIGINT');
    await stopped(p, 60_000);
    // tee died with the Ctrl-C: what it wrote before, and the node's own exit, are what is left.
    await waitFor('the node offline', () =>
      [...hub.hub.workers.values()].every((w) => w.name !== 'signals-b' || w.state === 'offline'),
    );
    const log = readFileSync(file, 'utf8');
    assert.ok(count(log, 'draining') <= 1, log.slice(-2000));
    assert.doesNotMatch(log, /Napi::Error|terminate called/);
  });

  test('SIGTERM to the npm process alone reaches the node, which drains and exits 0', async () => {
    const p = npmNode(hub, join(tmp.dir, 'c'), 'signals-c');
    await busy('signals-c');
    p.child.kill('SIGTERM');
    const code = await stopped(p, 60_000);
    assertDrainedOnce(p.output());
    assert.equal(code, 0, p.output().slice(-2000));
  });
});

/**
 * Whether a process holds signals (Linux: the SigCgt mask of /proc). Node catches SIGINT and SIGTERM
 * itself from its start (to restore the terminal before it dies of them), but not SIGHUP: a caught
 * SIGHUP is the node's hold (`common/early-signals.mjs`).
 */
function holdsSignals(pid: number): boolean {
  try {
    const mask = /^SigCgt:\s*([0-9a-f]+)$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1];
    return mask !== undefined && (BigInt(`0x${mask}`) & 1n) !== 0n; // SIGHUP is 1
  } catch {
    return false;
  }
}

describe('a signal while the node is still starting', { timeout: 180_000 }, () => {
  const tmp = tempDir();
  let hub: HubServer;
  const pids: number[] = [];

  before(async () => {
    hub = await startHub(join(tmp.dir, 'hub'));
  });
  after(async () => {
    for (const pid of pids) {
      try {
        process.kill(-pid, 'SIGKILL');
      } catch {
        /* already gone */
      }
    }
    killProcessesWith(tmp.dir); // a relaunched node is in a group of its own
    await hub.close();
    tmp.cleanup();
  });

  /**
   * `shardhub node` as `npm run shardhub` runs it (its preload, then tsx), without npm: `relaunch`
   * leaves out the node's flags, so that it runs itself again in a child.
   */
  function node(name: string, relaunch: boolean) {
    const args = [
      ...['--import', './common/hold-node-signals.mjs', '--import', 'tsx'],
      ...(relaunch ? [] : NODE_V8_FLAGS),
      ...['server/cli.ts', 'node', '--hub', hub.url, '--token', hub.tokens.joinToken, '--backend', 'sim'],
      ...['--state', join(tmp.dir, name), '--cache', join(tmp.dir, name, 'cache'), '--name', name],
    ];
    const child = spawn(process.execPath, args, {
      cwd: ROOT,
      detached: true,
      env: relaunch ? { ...process.env } : nodeEnv({ ...process.env }),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    pids.push(child.pid as number);
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((ok) =>
      child.once('exit', (code, signal) => ok({ code, signal })),
    );
    return { child, exited, output: () => out };
  }

  for (const relaunch of [false, true]) {
    for (const afterMs of [0, 700, 1500]) {
      const what = relaunch ? 'relaunching itself with its flags' : 'started with its flags';
      test(`SIGTERM ${afterMs} ms after its first handler, ${what}: it exits 0`, async () => {
        const name = `early-${relaunch ? 'r' : 'd'}-${afterMs}`;
        const p = node(name, relaunch);
        const pid = p.child.pid as number;
        // The preload's handler is the first thing the process installs; the modules load after.
        await waitFor('the first handler', () => holdsSignals(pid) || p.child.exitCode !== null, 30_000, 2);
        await new Promise((ok) => setTimeout(ok, afterMs));
        p.child.kill('SIGTERM');
        const end = await Promise.race([
          p.exited,
          new Promise<'hung'>((ok) => setTimeout(() => ok('hung'), 60_000)),
        ]);
        assert.notEqual(end, 'hung', `the node did not exit:\n${p.output().slice(-3000)}`);
        assert.deepEqual(end, { code: 0, signal: null }, p.output().slice(-3000));
        assert.doesNotMatch(p.output(), /Napi::Error|terminate called|Aborted/);
      });
    }
  }
});
