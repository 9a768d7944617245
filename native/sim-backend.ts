/**
 * The `sim` backend: no compute, it sleeps `itemMs / speed` per item (a batch of k items sleeps
 * k * itemMs / speed) so the scheduler can be measured alone, with workers of known speeds. An item
 * of R rows (dim 0 of its first input) costs R items: a job's items may cost more than the
 * one-row calibration item a benchmark runs, as with a real model.
 *
 * Each item's outputs copy an input of the same dtype and shape when there is one (so identity-like
 * models such as `noop` get their true answer), else hold the item's first input value in every
 * element, so results are checkable without running a model. There is one output per declared output, with the declared name and dtype
 * and the declared shape with every dynamic dim set to 1 (`y[N,1]` gives `[1,1]`, `y[N,16]` gives
 * `[1,16]`): the hub checks outputs against the manifest, and a sim worker's results must pass.
 * Scripted events, all timed from the first item this backend runs: `slowAtS` (runs become
 * `slowFactor` times slower) and `dieAtS` (a hard exit, like a crashed or killed machine); or
 * `slowNow()` (SIGUSR1 to a sim node) for a slowdown at a moment chosen from outside. Its sleeps and
 * scripted times follow an injected {@link Clock} (tests drive it by hand).
 */
import type { ModelInfo, TensorSpec } from '../protocol/model.ts';
import { DTYPE_BYTES, elementCount, toNumbers, type WireTensor } from '../protocol/tensor.ts';
import type { Backend, LoadedModel } from '../worker/backend.ts';
import { floatToHalf } from '../worker/calibration.ts';
import { sleep, systemClock, type Clock } from '../worker/clock.ts';

/** Options of the sim backend. */
export interface SimOptions {
  /** Relative speed (default 1): an item takes `itemMs / speed`. */
  speed?: number;
  /** Cost of one item at speed 1, in ms (default 50). */
  itemMs?: number;
  /** Seconds after the first item when runs become `slowFactor` times slower. */
  slowAtS?: number;
  /** How many times slower after `slowAtS` (default 4; below 1 means faster). */
  slowFactor?: number;
  /** Seconds after the first item when the process dies. */
  dieAtS?: number;
  /** How to die (default `process.exit(137)`, the exit status of a SIGKILLed process). */
  die?: () => void;
  /** Time for its sleeps and scripted events (default the system clock). */
  clock?: Clock;
}

/** The `sim` backend; see the file comment. */
export class SimBackend implements Backend {
  readonly name = 'sim' as const;
  readonly reason: string;
  private readonly speed: number;
  private readonly itemMs: number;
  private readonly slowFactor: number;
  private firstRunAt: number | undefined;
  private slowedAt: number | undefined;
  private cancelDie: (() => void) | undefined;
  private readonly clock: Clock;

  private constructor(private readonly opts: SimOptions) {
    this.speed = check('speed', opts.speed ?? 1, (v) => v > 0, 'greater than 0');
    this.itemMs = check('itemMs', opts.itemMs ?? 50, (v) => v >= 0, '0 or more');
    this.slowFactor = check('slowFactor', opts.slowFactor ?? 4, (v) => v > 0, 'greater than 0');
    if (opts.slowAtS !== undefined) check('slowAtS', opts.slowAtS, (v) => v >= 0, '0 or more');
    if (opts.dieAtS !== undefined) check('dieAtS', opts.dieAtS, (v) => v >= 0, '0 or more');
    this.clock = opts.clock ?? systemClock;
    this.reason = `simulated: ${this.itemMs} ms per item at speed ${this.speed}`;
  }

  /** Creates a sim backend; throws a RangeError for invalid options. */
  static async create(opts: SimOptions = {}): Promise<SimBackend> {
    return new SimBackend(opts);
  }

  /** Milliseconds one item takes now (after `slowAtS` it is `slowFactor` times longer). */
  msPerItem(now = this.clock.now()): number {
    const base = this.itemMs / this.speed;
    if (this.slowedAt !== undefined && now >= this.slowedAt) return base * this.slowFactor;
    const { slowAtS } = this.opts;
    if (slowAtS !== undefined && this.firstRunAt !== undefined && now - this.firstRunAt >= slowAtS * 1000) {
      return base * this.slowFactor;
    }
    return base;
  }

  /** Becomes `slowFactor` times slower from now on (a node does this on SIGUSR1). */
  slowNow(): void {
    this.slowedAt ??= this.clock.now();
  }

  async load(model: ModelInfo): Promise<LoadedModel> {
    const specs: TensorSpec[] =
      model.outputs.length > 0 ? model.outputs : [{ name: 'y', dtype: 'float32', shape: [1, 1] }];
    let disposed = false;
    // Timers have 1 ms resolution and wake late on a busy machine: each run ends at an exact
    // deadline after the previous one, so neither rounding nor wake-up lateness (up to LATE_MS)
    // accumulates and speeds stay as configured. The sim models a device computing back to back;
    // a run that starts after a real gap (the worker had nothing to do) starts from now.
    let nextFree = 0;
    return {
      run: async (items: WireTensor[][]): Promise<WireTensor[][]> => {
        if (disposed) throw new Error('sim session is disposed');
        this.started();
        const now = this.clock.now();
        const start = now - nextFree <= LATE_MS ? nextFree : now;
        let rows = 0;
        for (const inputs of items) rows += rowsOf(inputs);
        const end = start + rows * this.msPerItem(now);
        nextFree = end;
        await wait(this.clock, end - now);
        return items.map((inputs) => {
          const value = firstInputValue(inputs);
          return specs.map((spec) => echoed(spec, inputs) ?? filledTensor(spec, value));
        });
      },
      dispose: async () => {
        disposed = true;
      },
    };
  }

  async dispose(): Promise<void> {
    this.cancelDie?.();
    this.cancelDie = undefined;
  }

  private started(): void {
    if (this.firstRunAt !== undefined) return;
    this.firstRunAt = this.clock.now();
    const { dieAtS } = this.opts;
    if (dieAtS !== undefined) {
      const die = this.opts.die ?? (() => process.exit(137));
      // The worker's socket keeps the process alive; this timer alone must not.
      this.cancelDie = this.clock.after(dieAtS * 1000, die, { unref: true });
    }
  }
}

/**
 * An item's rows: dim 0 of its first input, at least 1. A model's cost grows with it, as with a
 * batch; a calibration item has one.
 */
export function rowsOf(inputs: readonly WireTensor[]): number {
  const d = inputs[0]?.dims[0];
  return typeof d === 'number' && d > 1 ? d : 1;
}

/** The first element of an item's first input, as a number (0 when there is none). */
export function firstInputValue(inputs: readonly WireTensor[]): number {
  const first = inputs[0];
  if (!first || first.data.byteLength === 0) return 0;
  return toNumbers({ dtype: first.dtype, data: first.data.subarray(0, DTYPE_BYTES[first.dtype]) })[0] ?? 0;
}

/** A tensor of a declared output for one item (dynamic dims = 1), every element set to `value`. */
export function filledTensor(spec: TensorSpec, value: number): WireTensor {
  const dims = spec.shape.map((d) => (typeof d === 'number' && d >= 0 ? d : 1));
  const n = elementCount(dims);
  const data = new Uint8Array(n * DTYPE_BYTES[spec.dtype]);
  const view = new DataView(data.buffer);
  for (let i = 0; i < n; i++) {
    switch (spec.dtype) {
      case 'float32':
        view.setFloat32(i * 4, value, true);
        break;
      case 'float64':
        view.setFloat64(i * 8, value, true);
        break;
      case 'float16':
        view.setUint16(i * 2, floatToHalf(value), true);
        break;
      case 'int32':
        view.setInt32(i * 4, Math.trunc(value), true);
        break;
      case 'int64':
        view.setBigInt64(i * 8, BigInt(Math.trunc(Number.isFinite(value) ? value : 0)), true);
        break;
      case 'uint8':
      case 'int8':
        view.setUint8(i, Math.trunc(value) & 0xff);
        break;
      case 'bool':
        view.setUint8(i, value ? 1 : 0);
        break;
    }
  }
  return { name: spec.name, dtype: spec.dtype, dims, data };
}

function check(name: string, v: number, ok: (v: number) => boolean, want: string): number {
  if (!Number.isFinite(v) || !ok(v)) throw new RangeError(`${name} must be ${want}`);
  return v;
}

/**
 * An input matching the output's dtype and shape, copied under the output's name: so a sim worker
 * gives the true answer of identity-like models (`noop`), which lets result checks run on sims.
 */
function echoed(spec: TensorSpec, inputs: readonly WireTensor[]): WireTensor | undefined {
  // Loops, not closures: this runs for every output of every item a sim worker runs.
  for (const t of inputs) {
    if (t.dtype !== spec.dtype || t.dims.length !== spec.shape.length) continue;
    let fits = true;
    for (let i = 0; i < spec.shape.length && fits; i++) {
      const d = spec.shape[i];
      fits = typeof d !== 'number' || d < 0 || d === t.dims[i];
    }
    if (fits) return { name: spec.name, dtype: t.dtype, dims: [...t.dims], data: new Uint8Array(t.data) };
  }
  return undefined;
}

/** Lateness of a run's start that is put down to the timer, not to an idle worker. */
const LATE_MS = 5;

/**
 * Waits `ms` on `clock`. Nothing left to wait (a 0 ms item, or a run already behind its deadline)
 * yields to the event loop once with `setImmediate` instead of a timer, whose 1 ms floor would cap
 * a no-op runner at about 1,000 runs/s.
 */
function wait(clock: Clock, ms: number): Promise<void> {
  return ms >= 1 ? sleep(clock, ms) : new Promise((resolve) => setImmediate(resolve));
}
