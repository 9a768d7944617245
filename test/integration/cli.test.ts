/**
 * The `shardhub` command as a user runs it: `--help` everywhere, `submit` from a folder of `.npy`
 * files and from images (with a progress line and results written as .npy), `jobs` and `workers`,
 * and `serve` started as a user starts it (it runs itself again with the hub's Node flags).
 */
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { PNG } from 'pngjs';
import { compareTensors } from '../../protocol/tensor.ts';
import type { HubServer } from '../../server/app.ts';
import { readNpy, writeNpy } from '../../server/io/npy.ts';
import { calibrationInputs } from '../../worker/calibration.ts';
import { HUB_NODE_FLAGS } from '../../server/node-flags.ts';
import {
  Reference,
  freePort,
  modelPath,
  serveArgs,
  spawnTs,
  startHub,
  startNode,
  tempDir,
  waitFor,
  type Proc,
} from '../helpers/grid.ts';

async function cli(args: string[]): Promise<{ code: number | null; out: string }> {
  const p = spawnTs('server/cli.ts', args);
  const { code } = await p.exited;
  return { code, out: p.output() };
}

describe('shardhub CLI', () => {
  const tmp = tempDir();
  let hub: HubServer;
  let node: Proc;

  before(async () => {
    hub = await startHub(join(tmp.dir, 'hub'));
    node = startNode(hub.url, hub.tokens.joinToken, join(tmp.dir, 'node'), ['--name', 'cli-node']);
    await waitFor(
      'node online',
      () => [...hub.hub.workers.values()].some((w) => w.state === 'online'),
      60_000,
    );
  });

  after(async () => {
    node.child.kill('SIGKILL');
    await hub.close();
    tmp.cleanup();
  });

  test('every command has --help, and a bad option is a clear usage error', async () => {
    for (const cmd of ['serve', 'node', 'submit', 'jobs', 'workers']) {
      const r = await cli([cmd, '--help']);
      assert.equal(r.code, 0, `${cmd} --help exits 0`);
      assert.match(r.out, /Usage: shardhub/, `${cmd} --help shows usage`);
    }
    const bad = await cli(['submit', '--hub', hub.url]);
    assert.equal(bad.code, 2);
    assert.match(bad.out, /--token is required/);
    const unknown = await cli(['frobnicate']);
    assert.equal(unknown.code, 2);
    assert.match(unknown.out, /unknown command "frobnicate"/);
  });

  test('submit a folder of .npy files: progress, then one .npy per output equal to the reference', async () => {
    const model = hub.hub.models.byName('mlp-small');
    assert.ok(model);
    const inputs = join(tmp.dir, 'npy-in');
    mkdirSync(inputs);
    const sent = Array.from({ length: 20 }, (_, i) => calibrationInputs(model, 500 + i)[0]);
    // Items 16 and 17 have names that are one path once made safe for an archive (a space becomes
    // `_`), and the last two long names that differ only at their end, which the archive shortens:
    // each must still land in a place of its own.
    const fileName = (i: number) =>
      i < 16
        ? `item${String(i).padStart(2, '0')}`
        : i < 18
          ? ['pair a', 'pair_a'][i - 16]
          : `scan-${'x'.repeat(70)}-${i}`;
    sent.forEach((t, i) => writeFileSync(join(inputs, `${fileName(i)}.npy`), writeNpy(t as never)));
    const out = join(tmp.dir, 'npy-out');
    const r = await cli([
      'submit',
      '--hub',
      hub.url,
      '--token',
      hub.tokens.operatorToken,
      '--model',
      'mlp-small',
      '--inputs',
      inputs,
      '--out',
      out,
    ]);
    assert.equal(r.code, 0, r.out);
    assert.match(r.out, /20\/20 done/);
    assert.match(r.out, /wrote 20 results/);
    const ref = await Reference.open(modelPath(hub, model));
    try {
      for (let i = 0; i < 16; i++) {
        const name = fileName(i);
        const got = readNpy(readFileSync(join(out, name, 'y.npy')), 'y');
        const want = (await ref.run([sent[i] as never]))[0];
        assert.ok(want);
        assert.equal(compareTensors(got, want, model.tolerance), undefined, `${name} equals the reference`);
      }
      for (const [prefix, first] of [
        ['pair', 16],
        ['scan-', 18],
      ] as const) {
        const dirs = readdirSync(out).filter((d) => d.startsWith(prefix));
        assert.equal(dirs.length, 2, `two directories for the two ${prefix} names: ${dirs.join(', ')}`);
        const wants = [
          (await ref.run([sent[first] as never]))[0],
          (await ref.run([sent[first + 1] as never]))[0],
        ];
        const matched: number[] = dirs.map((d): number =>
          wants.findIndex(
            (w) =>
              w &&
              compareTensors(readNpy(readFileSync(join(out, d, 'y.npy')), 'y'), w, model.tolerance) ===
                undefined,
          ),
        );
        assert.deepEqual(matched.sort(), [0, 1], `each ${prefix} item has its own result`);
      }
    } finally {
      await ref.close();
    }
    const status = JSON.parse(readFileSync(join(out, 'job.json'), 'utf8'));
    assert.equal(status.state, 'completed');
  });

  test('submit images to PaddleOCR detection: they are turned into tensors by the manifest', async () => {
    const dir = join(tmp.dir, 'images');
    mkdirSync(dir);
    for (let k = 0; k < 3; k++) {
      const png = new PNG({ width: 64, height: 48 });
      for (let i = 0; i < png.data.length; i += 4) {
        const on = (i / 4) % 64 > 10 + k * 5 && (i / 4) % 64 < 40 ? 0 : 255;
        png.data[i] = png.data[i + 1] = png.data[i + 2] = on;
        png.data[i + 3] = 255;
      }
      writeFileSync(join(dir, `page${k}.png`), PNG.sync.write(png));
    }
    const out = join(tmp.dir, 'img-out');
    const r = await cli([
      'submit',
      '--hub',
      hub.url,
      '--token',
      hub.tokens.operatorToken,
      '--model',
      'ppocr-det',
      '--inputs',
      dir,
      '--out',
      out,
    ]);
    assert.equal(r.code, 0, r.out);
    assert.deepEqual(
      readdirSync(out)
        .filter((f) => f.startsWith('page'))
        .sort(),
      ['page0', 'page1', 'page2'],
    );
    const map = readNpy(readFileSync(join(out, 'page0', 'sigmoid_0.tmp_0.npy')), 'map');
    assert.deepEqual(map.dims, [1, 1, 320, 320]);
  });

  test('jobs and workers list what the hub has; a wrong token is a clear error', async () => {
    const jobs = await cli(['jobs', '--hub', hub.url, '--token', hub.tokens.operatorToken]);
    assert.equal(jobs.code, 0);
    assert.match(jobs.out, /mlp-small\s+completed\s+20\/20/);
    const workers = await cli([
      'workers',
      '--hub',
      hub.url,
      '--token',
      hub.tokens.operatorToken,
      '--kind',
      'native',
      '--online',
    ]);
    assert.equal(workers.code, 0);
    assert.match(workers.out, /cli-node\s+native\s+cpu\s+online/);
    const none = await cli([
      'workers',
      '--hub',
      hub.url,
      '--token',
      hub.tokens.operatorToken,
      '--kind',
      'browser',
    ]);
    assert.doesNotMatch(none.out, /cli-node/);
    const denied = await cli(['jobs', '--hub', hub.url, '--token', 'op_wrong']);
    assert.equal(denied.code, 1);
    assert.match(denied.out, /refused the operator token/);
  });

  test("serve started without the hub's Node flags runs itself again with them; SIGTERM stops both", async () => {
    const port = await freePort();
    const serve = spawnTs('server/cli.ts', serveArgs(port, join(tmp.dir, 'serve')));
    try {
      await waitFor('hub up', () => serve.output().includes('hub is up'), 30_000);
      const pid = serve.child.pid as number;
      const children = readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').split(/\s+/).filter(Boolean);
      assert.equal(children.length, 1, `one child process: [${children.join(' ')}]`);
      const child = Number(children[0]);
      // Linux's view of the child: the hub's flags, and the hub is listening there.
      const cmdline = readFileSync(`/proc/${child}/cmdline`, 'utf8').split('\0');
      for (const f of HUB_NODE_FLAGS) assert.ok(cmdline.includes(f), `the child runs with ${f}`);
      assert.ok(cmdline.includes('serve'));
      const health = await fetch(`http://127.0.0.1:${port}/api/health`);
      assert.equal(health.status, 200);
      serve.child.kill('SIGTERM');
      assert.deepEqual(await serve.exited, { code: 0, signal: null }, serve.output());
      assert.throws(() => process.kill(child, 0), 'the child is gone');
    } finally {
      serve.child.kill('SIGKILL');
    }
  });
});
