import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import jpeg from 'jpeg-js';
import { PNG } from 'pngjs';
import { checkItemInputs, readInputsFolder } from '../../server/io/inputs.ts';
import { writeNpy } from '../../server/io/npy.ts';
import { bytesOf, DTYPE_BYTES, toNumbers, type DType, type WireTensor } from '../../protocol/tensor.ts';
import type { ModelInfo, ModelManifest } from '../../protocol/model.ts';

const MODELS_DIR = fileURLToPath(new URL('../../models/', import.meta.url));

/** A model's info from its manifest alone (these tests never touch the model file). */
async function info(name: string): Promise<ModelInfo> {
  const { file: _file, ...m } = JSON.parse(
    await readFile(join(MODELS_DIR, `${name}.json`), 'utf8'),
  ) as ModelManifest;
  void _file;
  return { ...m, sha256: 'f'.repeat(64), bytes: 1, url: `/api/models/${'f'.repeat(64)}` };
}

async function tempDir(t: { after: (fn: () => Promise<void>) => void }): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'shardhub-inputs-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

function npy(dtype: DType, dims: number[], fill = (i: number) => i): Uint8Array {
  const n = dims.reduce((a, b) => a * b, 1);
  const view = new DataView(new ArrayBuffer(n * DTYPE_BYTES[dtype]));
  for (let i = 0; i < n; i++) {
    if (dtype === 'float32') view.setFloat32(i * 4, fill(i), true);
    else if (dtype === 'float64') view.setFloat64(i * 8, fill(i), true);
    else if (dtype === 'int64') view.setBigInt64(i * 8, BigInt(fill(i)), true);
    else throw new Error(`test helper does not fill ${dtype}`);
  }
  return writeNpy({ dtype, dims, data: new Uint8Array(view.buffer) });
}

async function collect(dir: string, model: ModelInfo): Promise<{ name: string; inputs: WireTensor[] }[]> {
  const out: { name: string; inputs: WireTensor[] }[] = [];
  for await (const item of readInputsFolder(dir, model)) out.push(item);
  return out;
}

test('<item>.npy files become sorted single-input items, with a batch dim added when missing', async (t) => {
  const dir = await tempDir(t);
  const mlp = await info('mlp-small');
  await writeFile(
    join(dir, 'b.npy'),
    npy('float32', [64], (i) => i),
  );
  await writeFile(
    join(dir, 'a.npy'),
    npy('float32', [1, 64], (i) => -i),
  );
  await writeFile(join(dir, 'c10.npy'), npy('float32', [64]));
  await writeFile(join(dir, 'c2.npy'), npy('float32', [64]));
  await writeFile(join(dir, '.DS_Store'), 'ignored');
  const items = await collect(dir, mlp);
  assert.deepEqual(
    items.map((i) => i.name),
    ['a', 'b', 'c10', 'c2'],
  );
  for (const item of items) {
    assert.equal(item.inputs.length, 1);
    assert.equal(item.inputs[0]!.name, 'x');
    assert.deepEqual(item.inputs[0]!.dims, [1, 64]);
  }
  assert.equal(toNumbers(items[0]!.inputs[0]!)[5], -5);
  assert.equal(toNumbers(items[1]!.inputs[0]!)[63], 63);
});

test('a mismatched .npy is refused with the file name and the problem', async (t) => {
  const mlp = await info('mlp-small');
  const cases: [string, Uint8Array, RegExp][] = [
    ['dtype', npy('float64', [1, 64]), /input "x" is float64, model "mlp-small" needs float32/],
    [
      'fixed dim',
      npy('float32', [1, 63]),
      /dims \[1,63\], model "mlp-small" needs \[N,64\] \(dim 1 must be 64\)/,
    ],
    ['rank', npy('float32', [1, 1, 64]), /rank 3/],
    ['rows', npy('float32', [3, 64]), /3 rows in dim 0; items of batchable model "mlp-small" hold one row/],
    ['not npy', new TextEncoder().encode('hello'), /not an \.npy file/],
  ];
  for (const [what, bytes, re] of cases) {
    const dir = await tempDir(t);
    await writeFile(join(dir, 'item7.npy'), bytes);
    await assert.rejects(collect(dir, mlp), (err: Error) => {
      assert.ok(err.message.includes(join(dir, 'item7.npy')), `${what}: names the file: ${err.message}`);
      assert.match(err.message, re, what);
      return true;
    });
  }
});

test('folders hold one .npy per input for multi-input models', async (t) => {
  const dir = await tempDir(t);
  const vad = await info('silero-vad');
  for (const [item, k] of [
    ['frame-1', 1],
    ['frame-0', 0],
  ] as const) {
    await mkdir(join(dir, item));
    await writeFile(
      join(dir, item, 'input.npy'),
      npy('float32', [512], (i) => i / 512 + k),
    ); // batch dim added
    await writeFile(
      join(dir, item, 'state.npy'),
      npy('float32', [2, 1, 128], () => k),
    );
    await writeFile(
      join(dir, item, 'sr.npy'),
      npy('int64', [], () => 16000),
    );
  }
  const items = await collect(dir, vad);
  assert.deepEqual(
    items.map((i) => i.name),
    ['frame-0', 'frame-1'],
  );
  const [input, state, sr] = items[1]!.inputs;
  assert.deepEqual(
    items[1]!.inputs.map((x) => [x.name, x.dtype, x.dims]),
    [
      ['input', 'float32', [1, 512]],
      ['state', 'float32', [2, 1, 128]],
      ['sr', 'int64', []],
    ],
  );
  assert.equal(toNumbers(input!)[256], 1.5);
  assert.equal(toNumbers(state!)[0], 1);
  assert.deepEqual([...toNumbers(sr!)], [16000]);
});

test('multi-input folders with missing, unknown or inconsistent tensors are refused', async (t) => {
  const vad = await info('silero-vad');
  const make = async (files: Record<string, Uint8Array>) => {
    const dir = await tempDir(t);
    await mkdir(join(dir, 'it'));
    for (const [f, b] of Object.entries(files)) await writeFile(join(dir, 'it', f), b);
    return dir;
  };
  const input = npy('float32', [1, 512]);
  const state = npy('float32', [2, 1, 128]);
  const sr = npy('int64', [], () => 16000);
  await assert.rejects(
    collect(await make({ 'input.npy': input, 'state.npy': state }), vad),
    /it: missing sr\.npy for model "silero-vad"/,
  );
  await assert.rejects(
    collect(await make({ 'input.npy': input, 'state.npy': state, 'sr.npy': sr, 'extra.npy': sr }), vad),
    /extra\.npy: not an input of model "silero-vad" \(expected input\.npy, state\.npy, sr\.npy\)/,
  );
  await assert.rejects(
    collect(await make({ 'input.npy': npy('float32', [2, 512]), 'state.npy': state, 'sr.npy': sr }), vad),
    /dim "N" is 2 in input "input" but 1 in input "state"/,
  );
  // A single .npy cannot feed a model with three inputs.
  const dir = await tempDir(t);
  await writeFile(join(dir, 'x.npy'), input);
  await assert.rejects(collect(dir, vad), /has 3 inputs \(input, state, sr\); give each item as a folder/);
});

test('images become preprocessed tensors for models that declare preprocessing', async (t) => {
  const dir = await tempDir(t);
  const det = await info('ppocr-det');
  const img = new PNG({ width: 40, height: 30 });
  img.data.fill(255);
  await writeFile(join(dir, 'page-b.png'), PNG.sync.write(img));
  const rgba = new Uint8Array(32 * 32 * 4).fill(0);
  await writeFile(join(dir, 'page-a.JPG'), jpeg.encode({ width: 32, height: 32, data: rgba }, 95).data);
  await writeFile(
    join(dir, 'page-c.npy'),
    npy('float32', [3, 320, 320], () => 0.25),
  );
  const items = await collect(dir, det);
  assert.deepEqual(
    items.map((i) => [i.name, i.inputs[0]!.name, i.inputs[0]!.dims]),
    [
      ['page-a', 'x', [1, 3, 320, 320]],
      ['page-b', 'x', [1, 3, 320, 320]],
      ['page-c', 'x', [1, 3, 320, 320]],
    ],
  );
  const white = toNumbers(items[1]!.inputs[0]!);
  const black = toNumbers(items[0]!.inputs[0]!);
  // BGR with ImageNet mean/std: channel 0 uses mean 0.485 / std 0.229.
  assert.ok(Math.abs(white[0]! - (1 - 0.485) / 0.229) < 1e-5);
  assert.ok(Math.abs(black[0]! - (0 - 0.485) / 0.229) < 0.05); // JPEG black is within a level or two
  assert.ok(Math.abs(white[2 * 320 * 320]! - (1 - 0.406) / 0.225) < 1e-5);

  // The same folder is refused for a model without preprocessing.
  const mlp = await info('mlp-small');
  await assert.rejects(collect(dir, mlp), /page-a\.JPG: model "mlp-small" declares no image preprocessing/);
});

test('two files for one item name, or unsupported files, are refused', async (t) => {
  const det = await info('ppocr-det');
  const dir = await tempDir(t);
  await writeFile(join(dir, 'a.npy'), npy('float32', [3, 320, 320]));
  await writeFile(join(dir, 'a.png'), PNG.sync.write(new PNG({ width: 2, height: 2 })));
  await assert.rejects(collect(dir, det), /item "a" is also given by/);
  const dir2 = await tempDir(t);
  await writeFile(join(dir2, 'notes.txt'), 'hello');
  await assert.rejects(collect(dir2, det), /notes\.txt: unsupported file/);
});

test('checkItemInputs refuses unknown and duplicate inputs', async () => {
  const mlp = await info('mlp-small');
  const x: WireTensor = { name: 'x', dtype: 'float32', dims: [1, 64], data: bytesOf(new Float32Array(64)) };
  checkItemInputs([x], mlp, 'item 1');
  assert.throws(
    () => checkItemInputs([x, { ...x, name: 'z' }], mlp, 'item 1'),
    /^Error: item 1: unknown input "z"$/,
  );
  assert.throws(() => checkItemInputs([x, x], mlp, 'item 2'), /item 2: input "x" given twice/);
  assert.throws(() => checkItemInputs([], mlp, 'item 3'), /item 3: missing input "x"/);
});
