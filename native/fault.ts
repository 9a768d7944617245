/**
 * Fault injection for testing the hub's defences: a backend wrapper that corrupts items' outputs,
 * as a faulty GPU or a dishonest worker would (`--corrupt-rate P`, `--corrupt-after N`,
 * `--corrupt-scale F`). The corruption keeps names, dtypes and shapes, so only a comparison of
 * values can catch it.
 *
 * Two kinds of liar:
 * - blatant (the default): every element of a corrupted item's outputs is off by one, far outside
 *   any tolerance;
 * - subtle (`scale`): one element, the output's largest in magnitude, is multiplied by `scale`
 *   (1.05: just outside the generated models' tolerance, and only there). With `after` the worker
 *   answers its first `after` items of work honestly (its benchmarks do not count), so it passes
 *   probation before it starts to lie: a liar that only spot checks and canaries can catch.
 */
import type { ModelInfo } from '../protocol/model.ts';
import { toNumbers, type WireTensor } from '../protocol/tensor.ts';
import { floatToHalf } from '../worker/calibration.ts';
import type { Backend, LoadedModel } from '../worker/backend.ts';

/** How a {@link corrupting} backend lies. */
export interface CorruptOptions {
  /** Probability that an item (after the first `after`) is corrupted, 0..1. */
  rate: number;
  /**
   * Work items answered honestly before any is corrupted, counted from this backend's creation
   * across its sessions (default 0). Benchmark runs do not count (see `corrupting`).
   */
  after?: number;
  /**
   * Multiply one element (the largest in magnitude) by this instead of adding one to every element
   * (default: unset, the blatant kind).
   */
  scale?: number;
  /** Source of randomness (tests make it deterministic). */
  random?: () => number;
}

/** Wraps a backend so its items' outputs are corrupted as `opts` says (see the file comment). */
export function corrupting(inner: Backend, opts: CorruptOptions): Backend {
  const { rate, after = 0, scale, random = Math.random } = opts;
  if (!(rate >= 0 && rate <= 1)) throw new RangeError('rate must be between 0 and 1');
  if (!(Number.isInteger(after) && after >= 0)) throw new RangeError('after must be an integer >= 0');
  if (scale !== undefined && !(Number.isFinite(scale) && scale !== 1))
    throw new RangeError('scale must be a finite number other than 1');
  const lie = scale === undefined ? offByOne : (t: WireTensor) => scaledOne(t, scale);
  // Counted across every session of the backend: a worker turns liar once, whatever the model.
  let seen = 0;
  // A benchmark runs one batch of calibration items again and again (worker/benchmark.ts): on a
  // fast model thousands of items, which spent a liar's `after` before its first real item, so
  // the subtle liar of the soak and the trust bench lied from the start instead of passing
  // probation. A batch seen before is a benchmark's: answered honestly and not counted.
  const benchmark = new WeakSet<WireTensor[][]>();
  const wrapped: Backend = {
    name: inner.name,
    reason: inner.reason,
    async load(model: ModelInfo, bytes: Uint8Array): Promise<LoadedModel> {
      const loaded = await inner.load(model, bytes);
      return {
        run: async (items: WireTensor[][]) => {
          const out = await loaded.run(items);
          if (benchmark.has(items)) return out;
          benchmark.add(items);
          return out.map((outputs) => (seen++ >= after && random() < rate ? outputs.map(lie) : outputs));
        },
        dispose: () => loaded.dispose(),
      };
    },
  };
  if (inner.dispose) wrapped.dispose = () => inner.dispose?.() ?? Promise.resolve();
  if (inner.stage) wrapped.stage = inner.stage.bind(inner);
  if (inner.reserve) wrapped.reserve = inner.reserve.bind(inner);
  return wrapped;
}

/** Adds one to every element: values far outside any tolerance. */
function offByOne(t: WireTensor): WireTensor {
  return withValues(
    t,
    toNumbers(t).map((v) => v + 1),
  );
}

/** Multiplies the element largest in magnitude by `scale`; the others stay as they are. */
function scaledOne(t: WireTensor, scale: number): WireTensor {
  const values = toNumbers(t);
  if (values.length === 0) return t;
  let at = 0;
  for (let i = 1; i < values.length; i++)
    if (Math.abs(values[i] as number) > Math.abs(values[at] as number)) at = i;
  values[at] = (values[at] as number) * scale;
  return withValues(t, values);
}

/** `t` with its elements replaced by `values`, written in its own dtype. */
function withValues(t: WireTensor, values: Float64Array): WireTensor {
  const data = new Uint8Array(t.data.byteLength);
  const view = new DataView(data.buffer);
  for (let i = 0; i < values.length; i++) {
    const v = values[i] as number;
    switch (t.dtype) {
      case 'float32':
        view.setFloat32(i * 4, v, true);
        break;
      case 'float64':
        view.setFloat64(i * 8, v, true);
        break;
      case 'float16':
        view.setUint16(i * 2, floatToHalf(v), true);
        break;
      case 'int32':
        view.setInt32(i * 4, v, true);
        break;
      case 'int64':
        view.setBigInt64(i * 8, BigInt(Math.trunc(v)), true);
        break;
      default:
        view.setUint8(i, v & 0xff);
    }
  }
  return { ...t, data };
}
