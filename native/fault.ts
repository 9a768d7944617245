/**
 * Fault injection for testing the hub's defences: a backend wrapper that corrupts an item's outputs
 * with a given probability, as a faulty GPU or a dishonest worker would (`--corrupt-rate P`).
 * The corruption keeps names, dtypes and shapes, so only a comparison of values can catch it.
 */
import type { ModelInfo } from '../protocol/model.ts';
import { toNumbers, type WireTensor } from '../protocol/tensor.ts';
import { floatToHalf } from '../worker/calibration.ts';
import type { Backend, LoadedModel } from '../worker/backend.ts';

/** Wraps a backend so each item's outputs are corrupted with probability `rate`. */
export function corrupting(inner: Backend, rate: number, random: () => number = Math.random): Backend {
  const wrapped: Backend = {
    name: inner.name,
    reason: inner.reason,
    async load(model: ModelInfo, bytes: Uint8Array): Promise<LoadedModel> {
      const loaded = await inner.load(model, bytes);
      return {
        run: async (items: WireTensor[][]) => {
          const out = await loaded.run(items);
          return out.map((outputs) => (random() < rate ? outputs.map(corrupt) : outputs));
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

/** Adds one to every element: same names, dtypes and shapes, values far outside any tolerance. */
function corrupt(t: WireTensor): WireTensor {
  const values = toNumbers(t);
  const data = new Uint8Array(t.data.byteLength);
  const view = new DataView(data.buffer);
  for (let i = 0; i < values.length; i++) {
    const v = (values[i] as number) + 1;
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
