/**
 * `npm run models`: writes small deterministic ONNX models into `models/generated/` for tests and
 * benchmarks. Weights come from a seeded PRNG, so every run produces byte-identical files; a file
 * whose bytes would not change is left alone (idempotent, and its mtime stays put).
 *
 * Models: `mlp-small` (x[N,64] → 128 → y[N,16]), `mlp-tiny` (x[N,8] → 16 → y[N,4], fast enough for
 * browser tests) and `noop` (Identity on x[N,4]: measures dispatch, not compute).
 */
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import onnxProto from 'onnx-proto';
import { mulberry32 } from '../worker/calibration.ts';

const { onnx } = onnxProto;
type Proto = typeof onnx;

const FLOAT = onnx.TensorProto.DataType.FLOAT;
/** IR version 8 with opset 13: read by every onnxruntime from 1.10 on, web and node alike. */
const IR_VERSION = 8;
const OPSET = 13;

/** A generated model's recipe. */
interface Recipe {
  name: string;
  build: (p: Proto) => InstanceType<Proto['ModelProto']>;
}

/** `[N, dim]` float value info with a symbolic batch dim. */
function floatInfo(p: Proto, name: string, dim: number) {
  return p.ValueInfoProto.create({
    name,
    type: p.TypeProto.create({
      tensorType: p.TypeProto.Tensor.create({
        elemType: FLOAT,
        shape: p.TensorShapeProto.create({
          dim: [
            p.TensorShapeProto.Dimension.create({ dimParam: 'N' }),
            p.TensorShapeProto.Dimension.create({ dimValue: dim }),
          ],
        }),
      }),
    }),
  });
}

/** A float32 initializer filled from the PRNG, uniform in ±1/sqrt(fanIn) (the usual init scale). */
function weights(p: Proto, name: string, dims: number[], fanIn: number, rand: () => number) {
  const n = dims.reduce((a, b) => a * b, 1);
  const values = new Float32Array(n);
  const bound = 1 / Math.sqrt(fanIn);
  for (let i = 0; i < n; i++) values[i] = (rand() * 2 - 1) * bound;
  return p.TensorProto.create({
    name,
    dims,
    dataType: FLOAT,
    rawData: new Uint8Array(values.buffer), // raw_data is little-endian, as Float32Array is on every supported host
  });
}

function model(p: Proto, graph: InstanceType<Proto['GraphProto']>, doc: string) {
  return p.ModelProto.create({
    irVersion: IR_VERSION,
    producerName: 'shardhub models/build.ts',
    producerVersion: '1',
    docString: doc,
    opsetImport: [p.OperatorSetIdProto.create({ domain: '', version: OPSET })],
    graph,
  });
}

/** x[N,inDim] → MatMul+Add+Relu (hidden) → MatMul+Add → y[N,outDim]. */
function mlp(name: string, inDim: number, hidden: number, outDim: number, seed: number): Recipe {
  return {
    name,
    build: (p) => {
      const rand = mulberry32(seed);
      const node = (opType: string, input: string[], output: string[]) =>
        p.NodeProto.create({ opType, input, output, name: `${opType.toLowerCase()}_${output[0]}` });
      const graph = p.GraphProto.create({
        name,
        input: [floatInfo(p, 'x', inDim)],
        output: [floatInfo(p, 'y', outDim)],
        initializer: [
          weights(p, 'w1', [inDim, hidden], inDim, rand),
          weights(p, 'b1', [hidden], inDim, rand),
          weights(p, 'w2', [hidden, outDim], hidden, rand),
          weights(p, 'b2', [outDim], hidden, rand),
        ],
        node: [
          node('MatMul', ['x', 'w1'], ['h1']),
          node('Add', ['h1', 'b1'], ['h1b']),
          node('Relu', ['h1b'], ['h1r']),
          node('MatMul', ['h1r', 'w2'], ['h2']),
          node('Add', ['h2', 'b2'], ['y']),
        ],
      });
      return model(p, graph, `shardhub test MLP ${inDim}->${hidden}->${outDim}, PRNG seed ${seed}`);
    },
  };
}

const noop: Recipe = {
  name: 'noop',
  build: (p) =>
    model(
      p,
      p.GraphProto.create({
        name: 'noop',
        input: [floatInfo(p, 'x', 4)],
        output: [floatInfo(p, 'y', 4)],
        node: [p.NodeProto.create({ opType: 'Identity', input: ['x'], output: ['y'], name: 'identity' })],
      }),
      'shardhub noop: y = x, for measuring dispatch and scheduling alone',
    ),
};

/** Every generated model, by name. */
export const RECIPES: readonly Recipe[] = [
  mlp('mlp-small', 64, 128, 16, 0x5eed0001),
  mlp('mlp-tiny', 8, 16, 4, 0x5eed0002),
  noop,
];

/** Directory the generated models are written to. */
export const GENERATED_DIR = join(dirname(fileURLToPath(import.meta.url)), 'generated');

/** Encodes one recipe to ONNX bytes (deterministic). */
export function encodeRecipe(r: Recipe): Uint8Array {
  return onnx.ModelProto.encode(r.build(onnx)).finish();
}

/** Writes every generated model, skipping files whose bytes are already identical. */
export async function buildModels(
  dir = GENERATED_DIR,
): Promise<{ name: string; bytes: number; written: boolean }[]> {
  await mkdir(dir, { recursive: true });
  const out: { name: string; bytes: number; written: boolean }[] = [];
  for (const r of RECIPES) {
    const bytes = encodeRecipe(r);
    const file = join(dir, `${r.name}.onnx`);
    const old = await readFile(file).catch(() => undefined);
    const same = old !== undefined && Buffer.compare(old, bytes) === 0;
    if (!same) {
      // Write then rename, so a reader never sees half a model.
      const tmp = `${file}.${process.pid}.tmp`;
      await writeFile(tmp, bytes);
      await rename(tmp, file);
    }
    out.push({ name: r.name, bytes: bytes.byteLength, written: !same });
  }
  return out;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const results = await buildModels();
  for (const r of results) {
    process.stdout.write(
      `${r.written ? 'wrote    ' : 'unchanged'} generated/${r.name}.onnx (${r.bytes} bytes)\n`,
    );
  }
}
