/**
 * Deterministic pseudo-random inputs of a model's calibration dims: what benchmarks run, and how
 * test items are made (a different seed gives a different item). Runs in browsers and in Node, so
 * this file imports nothing from `node:`.
 */
import type { ModelInfo } from '../protocol/model.ts';
import { DTYPE_BYTES, elementCount, type DType, type WireTensor } from '../protocol/tensor.ts';

/**
 * mulberry32: a tiny, fast 32-bit PRNG returning floats in [0, 1).
 * Chosen because it is exact in JS (all 32-bit integer ops), so every platform draws the same values.
 */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Largest small integer drawn for integer inputs (values are in [0, SMALL_INT_RANGE)). */
const SMALL_INT_RANGE = 16;

/**
 * Builds one item's inputs for a model: one tensor per declared input, with the calibration dims.
 * Floats are uniform in [0, 1); integers are small and non-negative; bools are 0/1.
 * `calibration.values[name]` replaces the random values of that input (e.g. a sample rate).
 * @param seed defaults to `calibration.seed`; each input draws from its own stream, so inputs stay
 *   the same when another input is added or reordered.
 */
export function calibrationInputs(
  model: Pick<ModelInfo, 'inputs' | 'calibration'>,
  seed?: number,
): WireTensor[] {
  const base = seed ?? model.calibration.seed;
  return model.inputs.map((spec) => {
    const dims = model.calibration.dims[spec.name];
    if (!dims) throw new Error(`calibration has no dims for input "${spec.name}"`);
    const n = elementCount(dims);
    const fixed = model.calibration.values?.[spec.name];
    if (fixed && fixed.length !== n) {
      throw new Error(
        `calibration values for "${spec.name}" have ${fixed.length} elements, but dims [${dims.join(',')}] need ${n}`,
      );
    }
    const rand = mulberry32(mixSeed(base, spec.name));
    const next = fixed ? (i: number) => fixed[i] as number : () => rand();
    return { name: spec.name, dtype: spec.dtype, dims: [...dims], data: fill(spec.dtype, n, next, !fixed) };
  });
}

/**
 * The model with every calibration input's dim 0 set to `rows` (`rows` 1: the model as it is), so
 * `calibrationInputs` makes items of that many rows: heavier items than the calibration item a
 * benchmark runs.
 */
export function withRows<M extends Pick<ModelInfo, 'calibration'>>(model: M, rows: number): M {
  if (rows === 1) return model;
  const dims = Object.fromEntries(
    Object.entries(model.calibration.dims).map(([k, d]) => [k, [rows, ...d.slice(1)]]),
  );
  return { ...model, calibration: { ...model.calibration, dims } };
}

/** Combines a seed with an input name (FNV-1a over the name), so each input has its own stream. */
function mixSeed(seed: number, name: string): number {
  let h = (0x811c9dc5 ^ seed) >>> 0;
  for (let i = 0; i < name.length; i++) {
    h ^= name.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h;
}

function fill(dtype: DType, n: number, next: (i: number) => number, random: boolean): Uint8Array {
  const data = new Uint8Array(n * DTYPE_BYTES[dtype]);
  const view = new DataView(data.buffer);
  // Random draws in [0,1) become small ints / bools; fixed values are used as they are.
  const int = (i: number) => (random ? Math.floor(next(i) * SMALL_INT_RANGE) : Math.round(next(i)));
  for (let i = 0; i < n; i++) {
    switch (dtype) {
      case 'float32':
        view.setFloat32(i * 4, next(i), true);
        break;
      case 'float64':
        view.setFloat64(i * 8, next(i), true);
        break;
      case 'float16':
        view.setUint16(i * 2, floatToHalf(next(i)), true);
        break;
      case 'int32':
        view.setInt32(i * 4, int(i), true);
        break;
      case 'int64':
        view.setBigInt64(i * 8, BigInt(int(i)), true);
        break;
      case 'uint8':
        view.setUint8(i, int(i));
        break;
      case 'int8':
        view.setInt8(i, int(i));
        break;
      case 'bool':
        view.setUint8(i, random ? (next(i) < 0.5 ? 0 : 1) : next(i) ? 1 : 0);
        break;
    }
  }
  return data;
}

/** Encodes a number as IEEE half precision (round to nearest even), for float16 inputs. */
export function floatToHalf(value: number): number {
  const f32 = new Float32Array([value]);
  const x = new Uint32Array(f32.buffer)[0] as number;
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  let mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0); // Inf / NaN
  const e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00; // overflow to Inf
  if (e <= 0) {
    if (e < -10) return sign; // underflow to zero
    mant |= 0x800000; // subnormal half: shift in the implicit bit
    const shift = 14 - e;
    let half = mant >>> shift;
    const rem = mant & ((1 << shift) - 1);
    const mid = 1 << (shift - 1);
    if (rem > mid || (rem === mid && half & 1)) half++;
    return sign | half;
  }
  let half = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  // Rounding up may carry into the exponent (even up to Inf): that is the correct result.
  if (rem > 0x1000 || (rem === 0x1000 && half & 1)) half++;
  return sign | half;
}
