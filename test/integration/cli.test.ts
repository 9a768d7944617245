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
import type { ModelInfo } from '../../protocol/model.ts';
import { HUB_NODE_FLAGS } from '../../server/node-flags.ts';
import {
  Reference,
  Rest,
  ROOT,
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
import { CuttingProxy } from '../helpers/cutting-proxy.ts';

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
    const version = await cli(['--version']);
    assert.equal(version.code, 0);
    assert.equal(version.out.trim(), JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')).version);
    const help = await cli(['--help']);
    assert.match(help.out, /Exit codes:\n\s+0\s+done[\s\S]*\n\s+4\s+the hub could not be reached/);
    const submitHelp = await cli(['submit', '--help']);
    assert.match(submitHelp.out, /--min-gpu-memory <SIZE>[\s\S]*Exit codes:/);
  });

  test('bad URLs, ports and folders: one line saying what to do, exit 2, no stack trace', async () => {
    const cases: [string[], RegExp][] = [
      [
        ['node', '--hub', 'localhost:8080'],
        /--hub must be an http:\/\/ or https:\/\/ URL, got "localhost:8080"; did you mean http:\/\/localhost:8080\?/,
      ],
      [['serve', '--port', '99999'], /--port must be an integer from 0 to 65535, got 99999/],
      [
        ['submit', '--hub', hub.url, '--token', 't', '--model', 'm', '--inputs', join(tmp.dir, 'nope')],
        /--inputs: no folder/,
      ],
      [['workers', '--hub', hub.url, '--token', 't', '--min-gpu-memory', 'lots'], /must be a size like 8GB/],
    ];
    for (const [args, re] of cases) {
      const r = await cli(args);
      assert.equal(r.code, 2, r.out);
      assert.match(r.out, re);
      assert.doesNotMatch(r.out, /\n\s+at /, 'no stack trace');
    }
    const gone = await cli(['jobs', '--hub', `http://127.0.0.1:${await freePort()}`, '--token', 't']);
    assert.equal(gone.code, 4, gone.out);
    assert.match(gone.out, /cannot reach the hub at .*is it running\?/);
  });

  test('serve on a port in use: one line, exit 5', async () => {
    const port = hub.port;
    const r = await cli(serveArgs(port, join(tmp.dir, 'busy-port')));
    assert.equal(r.code, 5, r.out);
    assert.match(r.out, new RegExp(`port ${port} is in use .*--port`));
    assert.doesNotMatch(r.out, /\n\s+at /);
  });

  const op = () => ['--hub', hub.url, '--token', hub.tokens.operatorToken];
  const jobIds = async () => (await hub.hub.jobs.list({ limit: 1000 })).map((j) => j.id);

  test('submit checks its inputs before it creates a job, and cancels the job when an item is bad', async () => {
    const model = hub.hub.models.byName('mlp-small');
    assert.ok(model);
    const before = (await jobIds()).length;
    const layout = join(tmp.dir, 'bad-layout');
    mkdirSync(layout);
    writeFileSync(join(layout, 'a.npy'), writeNpy(calibrationInputs(model, 1)[0] as never));
    writeFileSync(join(layout, 'notes.txt'), 'not an input');
    const r1 = await cli(['submit', ...op(), '--model', 'mlp-small', '--inputs', layout, '--no-wait']);
    assert.equal(r1.code, 2, r1.out);
    assert.match(r1.out, /notes\.txt: unsupported file/);
    const empty = join(tmp.dir, 'empty-in');
    mkdirSync(empty);
    const r2 = await cli(['submit', ...op(), '--model', 'mlp-small', '--inputs', empty, '--no-wait']);
    assert.equal(r2.code, 2, r2.out);
    assert.match(r2.out, /no items/);
    assert.equal((await jobIds()).length, before, 'no job was created for a folder that cannot be sent');

    // A bad shape is found while reading: the job that was created is cancelled, not left open.
    const shapes = join(tmp.dir, 'bad-shape');
    mkdirSync(shapes);
    writeFileSync(join(shapes, 'a.npy'), writeNpy(calibrationInputs(model, 1)[0] as never));
    writeFileSync(
      join(shapes, 'b.npy'),
      writeNpy({ name: 'x', dtype: 'float32', dims: [1, 3], data: new Uint8Array(12) } as never),
    );
    const r3 = await cli(['submit', ...op(), '--model', 'mlp-small', '--inputs', shapes, '--no-wait']);
    assert.equal(r3.code, 1, r3.out);
    assert.match(r3.out, /b\.npy: input "x" has dims \[1,3\]/);
    const id = /job (j_\w+) cancelled: its upload did not finish/.exec(r3.out)?.[1];
    assert.ok(id, r3.out);
    assert.equal((await hub.hub.jobs.get(id))?.state, 'cancelled');
    assert.equal((await hub.hub.jobs.list({ limit: 1000 })).filter((j) => j.state === 'open').length, 0);
  });

  test('Ctrl-C during the upload cancels the job; exit 130', async () => {
    const model = hub.hub.models.byName('mlp-small');
    assert.ok(model);
    const dir = join(tmp.dir, 'many');
    mkdirSync(dir);
    for (let i = 0; i < 3000; i++)
      writeFileSync(join(dir, `i${i}.npy`), writeNpy(calibrationInputs(model, i)[0] as never));
    const p = spawnTs('server/cli.ts', [
      'submit',
      ...op(),
      '--model',
      'mlp-small',
      '--inputs',
      dir,
      '--no-wait',
    ]);
    const id = await waitFor('the job id', () => /^(j_\w+)$/m.exec(p.output())?.[1], 30_000, 5);
    p.child.kill('SIGINT');
    const { code } = await p.exited;
    assert.equal(code, 130, p.output());
    assert.match(p.output(), new RegExp(`job ${id} cancelled`));
    assert.equal((await hub.hub.jobs.get(id))?.state, 'cancelled');
  });

  test('a connection dropped mid-upload is resumed: the job completes with every input exactly once', async () => {
    const model = hub.hub.models.byName('mlp-small');
    assert.ok(model);
    const dir = join(tmp.dir, 'resumed');
    mkdirSync(dir);
    const n = 2400; // about 150 kB a request of 500 items: five requests
    for (let i = 0; i < n; i++)
      writeFileSync(
        join(dir, `r${String(i).padStart(4, '0')}.npy`),
        writeNpy(calibrationInputs(model, i)[0] as never),
      );
    // First a request cut off in its middle, then a request the hub stored whose reply is lost;
    // each time the proxy refuses connections for a while, so the first retry fails too.
    const proxy = await CuttingProxy.start(hub.port, [
      { afterUpBytes: 250_000, refuseMs: 1500 },
      { afterUpBytes: 500_000, replyStartingWith: 'HTTP/1.1 201', refuseMs: 500 },
    ]);
    try {
      const out = join(tmp.dir, 'resumed-out');
      const r = await cli([
        'submit',
        ...['--hub', proxy.url, '--token', hub.tokens.operatorToken],
        ...['--model', 'mlp-small', '--inputs', dir, '--out', out],
      ]);
      const why = `${r.out}\nproxy: ${proxy.events.join('; ')}`;
      assert.equal(r.code, 0, why);
      assert.equal(proxy.pending, 0, `both cuts happened: ${why}`);
      assert.match(r.out, /upload interrupted at item \d+ of 2400 \(.+\); retry 1 of 5 in 1 s/, why);
      assert.match(r.out, /retry 2 of 5 in 2 s/, 'the hub refused the first retry');
      assert.match(r.out, /upload resumed at item \d+ of 2400 \(the hub has \d+\)/, why);
      assert.match(
        r.out,
        /upload resumed: the hub had stored items \d+-\d+ before the connection dropped/,
        why,
      );
      const id = /^(j_\w+)$/m.exec(r.out)?.[1] as string;
      const job = await hub.hub.jobs.get(id);
      assert.equal(job?.state, 'completed', why);
      assert.equal(job?.itemCount, n, 'every input once: none lost, none twice');
      const names = (await hub.hub.jobs.items(id, { offset: 0, limit: 10_000 })).map((it) => it.name);
      assert.equal(new Set(names).size, n);
      assert.deepEqual(
        names.sort(),
        Array.from({ length: n }, (_, i) => `r${String(i).padStart(4, '0')}`),
      );
      assert.match(r.out, /wrote 2400 results/);
    } finally {
      await proxy.close();
    }
  });

  test('an upload whose hub stays away longer than its retries is cancelled; exit 4', async () => {
    const model = hub.hub.models.byName('mlp-small');
    assert.ok(model);
    const dir = join(tmp.dir, 'given-up');
    mkdirSync(dir);
    for (let i = 0; i < 1200; i++)
      writeFileSync(join(dir, `g${i}.npy`), writeNpy(calibrationInputs(model, i)[0] as never));
    // Away for 32 s: longer than the retries' 30 s, back in time for the cancel (retried for 10 s).
    const proxy = await CuttingProxy.start(hub.port, [{ afterUpBytes: 200_000, refuseMs: 32_000 }]);
    try {
      const r = await cli([
        'submit',
        ...['--hub', proxy.url, '--token', hub.tokens.operatorToken],
        ...['--model', 'mlp-small', '--inputs', dir, '--no-wait'],
      ]);
      assert.equal(r.code, 4, r.out);
      assert.match(r.out, /retry 5 of 5 in 15 s/);
      assert.match(r.out, /the upload of job j_\w+ stopped at item \d+ of 1200: cannot reach the hub/);
      const id = /job (j_\w+) cancelled: its upload did not finish/.exec(r.out)?.[1];
      assert.ok(id, r.out);
      assert.equal((await hub.hub.jobs.get(id))?.state, 'cancelled');
    } finally {
      await proxy.close();
    }
  });

  test('submit takes priority, deadline, redundancy and requirements; sizes take units', async () => {
    const dir = join(tmp.dir, 'one');
    mkdirSync(dir);
    const model = hub.hub.models.byName('mlp-small');
    assert.ok(model);
    writeFileSync(join(dir, 'a.npy'), writeNpy(calibrationInputs(model, 3)[0] as never));
    const t0 = Date.now();
    const r = await cli([
      ...['submit', ...op(), '--model', 'mlp-small', '--inputs', dir, '--no-wait'],
      ...[
        '--priority',
        '7',
        '--deadline',
        '2h',
        '--redundancy',
        '2',
        '--kind',
        'browser',
        '--min-gpu-memory',
        '8GB',
        '--min-cores',
        '4',
      ],
    ]);
    assert.equal(r.code, 0, r.out);
    const id = /^(j_\w+)$/m.exec(r.out)?.[1];
    assert.ok(id);
    const job = await hub.hub.jobs.get(id);
    assert.equal(job?.priority, 7);
    assert.equal(job?.redundancy, 2);
    assert.ok(
      job?.deadline && Math.abs(job.deadline - (t0 + 2 * 3600_000)) < 60_000,
      `deadline ${job?.deadline}`,
    );
    assert.deepEqual(job?.requirements, { kind: 'browser', minGpuMemoryBytes: 8e9, minCores: 4 });
    await cli(['jobs', ...op(), '--cancel', id]);
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
    assert.match(r.out, /^j_\w+$/m, 'the job id on a line of its own');
    assert.match(r.out, /uploading .* 20\/20 items/, 'upload progress');
    assert.match(r.out, /completed: 20 items in \d+ s/);
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
  test("jobs --download writes any job's results; --out holding other results is refused unless --resume or --overwrite", async () => {
    const done = (await hub.hub.jobs.list({ limit: 1000 })).filter(
      (j) => j.state === 'completed' && j.modelName === 'mlp-small',
    );
    assert.ok(done.length >= 1);
    const id = done[0]!.id;
    const out = join(tmp.dir, 'dl');
    const r = await cli(['jobs', ...op(), '--download', id, '--out', out]);
    assert.equal(r.code, 0, r.out);
    assert.match(r.out, /wrote 20 results/);
    assert.equal(JSON.parse(readFileSync(join(out, 'job.json'), 'utf8')).id, id);
    const again = await cli(['jobs', ...op(), '--download', id, '--out', out, '--resume']);
    assert.equal(again.code, 0, 'the same job again: fine');
    // Another job's results into that folder: refused before anything is written or created.
    const other = join(tmp.dir, 'npy-in');
    const before = (await jobIds()).length;
    const refused = await cli(['submit', ...op(), '--model', 'mlp-small', '--inputs', other, '--out', out]);
    assert.equal(refused.code, 2, refused.out);
    assert.match(
      refused.out,
      new RegExp(`--out .* already holds the results of job ${id}; pass --resume .* --overwrite`),
    );
    assert.equal((await jobIds()).length, before, 'no job created');
    const stray = join(tmp.dir, 'stray');
    mkdirSync(stray);
    writeFileSync(join(stray, 'keep.txt'), 'mine');
    const r2 = await cli(['jobs', ...op(), '--download', id, '--out', stray]);
    assert.equal(r2.code, 2);
    assert.match(r2.out, /already holds 1 other file/);
    const over = await cli(['jobs', ...op(), '--download', id, '--out', stray, '--overwrite']);
    assert.equal(over.code, 0, over.out);
    assert.ok(readdirSync(stray).includes('keep.txt'), 'files that are not results are kept');
  });
});

describe('a dropped connection does not lose the job', () => {
  const tmp = tempDir();
  after(() => tmp.cleanup());

  test('jobs --wait retries while the hub is down and picks the job up again when it is back', async () => {
    const port = await freePort();
    const data = join(tmp.dir, 'hub');
    const url = `http://127.0.0.1:${port}`;
    const first = spawnTs('server/cli.ts', serveArgs(port, data));
    await waitFor('hub up', () => first.output().includes('hub is up'), 30_000);
    const opToken = /operator token: +(\S+)/.exec(first.output())?.[1] as string;
    const joinToken = /node join token: +(\S+)/.exec(first.output())?.[1] as string;
    const rest = new Rest(url, opToken);
    const { models } = await rest.data('GET', '/api/models');
    const model = (models as ModelInfo[]).find((m) => m.name === 'mlp-tiny') as ModelInfo;
    const items = Array.from({ length: 30 }, (_, i) => ({
      name: `t${i}`,
      tensors: calibrationInputs(model, i),
    }));
    const id = await rest.submit('mlp-tiny', items);
    first.child.kill('SIGTERM');
    await first.exited;

    const out = join(tmp.dir, 'out');
    const wait = spawnTs('server/cli.ts', [
      'jobs',
      '--hub',
      url,
      '--token',
      opToken,
      '--wait',
      id,
      '--out',
      out,
    ]);
    await waitFor(
      'a retry',
      () => /cannot reach the hub .* retrying for up to 300 s/.test(wait.output()),
      20_000,
    );
    const second = spawnTs('server/cli.ts', serveArgs(port, data));
    const node = startNode(url, joinToken, join(tmp.dir, 'node'));
    try {
      const { code } = await wait.exited;
      assert.equal(code, 0, wait.output());
      assert.match(wait.output(), new RegExp(`job ${id} completed: 30 items`));
      assert.match(wait.output(), /wrote 30 results/);
      assert.equal(readdirSync(out).filter((d) => d.startsWith('t')).length, 30);
    } finally {
      node.child.kill('SIGKILL');
      second.child.kill('SIGTERM');
      await second.exited;
    }
  });
});
