/**
 * The one backend interface every worker runs models through: onnxruntime-node (`cpu`/`cuda`) and
 * the `sim` backend on native nodes, onnxruntime-web (`webgpu`/`wasm`) in browsers.
 *
 * A backend loads a model into a {@link LoadedModel} (one per runner: a worker with concurrency N
 * holds N of them) and a loaded model runs one or more items at a time. How items are batched is
 * the loaded model's business (see `batching.ts`); the run loop only hands it up to `batchSize`
 * items of one model. This file imports nothing from `node:`: browsers use it too.
 */
import type { Backend as BackendName, FailureCategory } from '../protocol/events.ts';
import type { ModelInfo } from '../protocol/model.ts';
import { bytesOf, DTYPES, type DType, type WireTensor } from '../protocol/tensor.ts';

/** Something that loads models for one kind of compute. */
export interface Backend {
  /** The backend actually in use (after any fallback), as registered with the hub. */
  readonly name: BackendName;
  /** Why this backend runs (e.g. "CUDA provider not installed; using cpu"), for people and the hub. */
  readonly reason?: string;
  /** Loads a model's bytes into something that runs items. Rejects with a {@link BackendError}. */
  load(model: ModelInfo, bytes: Uint8Array): Promise<LoadedModel>;
  /**
   * Takes over an item's inputs as its shard arrives (optional), returning what to queue instead:
   * a native node copies them into the batch buffer they will run from (`native/staging.ts`).
   * Returns the inputs as they are when it cannot.
   */
  stage?(model: ModelInfo, inputs: WireTensor[]): WireTensor[];
  /**
   * Places for an item's inputs of these names, dtypes and dims, for the caller to fill in place of
   * {@link stage}'s copy (optional; a native node's data channel reads its socket into them).
   * Returns undefined when it has none to offer.
   */
  reserve?(model: ModelInfo, inputs: readonly Omit<WireTensor, 'data'>[]): WireTensor[] | undefined;
  /** Releases what the backend holds beyond its loaded models (optional). */
  dispose?(): Promise<void>;
}

/** A model loaded by a backend: one session, used by one runner at a time. */
export interface LoadedModel {
  /**
   * Runs items (each a list of named input tensors) and returns each item's outputs, in order.
   * Rejects with a {@link BackendError} (or any error; see {@link classifyError}).
   */
  run(items: WireTensor[][]): Promise<WireTensor[][]>;
  /** Frees the session's (native) resources. Idempotent. */
  dispose(): Promise<void>;
}

/** Creates the backend; called once by the run loop when it starts. */
export type BackendFactory = () => Promise<Backend>;

/** The logging the shared worker code needs: a pino-compatible subset, injected (no `node:`). */
export interface WorkerLogger {
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
  debug(obj: object, msg?: string): void;
}

/** A logger that drops everything: the default where none is given. */
export const silentLogger: WorkerLogger = {
  info: () => undefined,
  warn: () => undefined,
  error: () => undefined,
  debug: () => undefined,
};

/** An error from a backend that already knows how the hub should count it. */
export class BackendError extends Error {
  override name = 'BackendError';
  /** The failure category reported with the affected items. */
  readonly category: FailureCategory;

  constructor(category: FailureCategory, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.category = category;
  }
}

/** Where an error happened: loading a model or running items. */
export type ErrorPhase = 'load' | 'run';

/**
 * Classifies an error from a backend into a failure category. A {@link BackendError} keeps its own;
 * otherwise the message decides: out-of-memory and device-lost win in any phase (they say more about
 * the machine than about the model), then a load-phase error is `model_load`, a timeout `timeout`.
 */
export function classifyError(err: unknown, phase: ErrorPhase): FailureCategory {
  if (err instanceof BackendError) return err.category;
  const message = errorMessage(err);
  if (/out of memory|bad_alloc|\bOOM\b|failed to allocate/i.test(message)) return 'out_of_memory';
  if (/device (was |is )?lost|device_lost|device removed|DXGI_ERROR_DEVICE/i.test(message))
    return 'device_lost';
  if (phase === 'load') return 'model_load';
  if (/timed? ?out|timeout/i.test(message)) return 'timeout';
  return 'other';
}

/** A one-line message for any thrown value, for logs and failure reports. */
export function errorMessage(err: unknown): string {
  if (err instanceof Error) return err.message || err.name;
  if (typeof err === 'string') return err;
  try {
    return JSON.stringify(err) ?? String(err);
  } catch {
    return String(err);
  }
}

/** What onnxruntime (node or web) gives for a tensor output. */
export interface OrtTensorLike {
  type: string;
  dims: readonly number[];
  data: unknown;
}

/**
 * An onnxruntime output (node or web) as a wire tensor with bytes of its own, independent of the
 * session. The bytes are copied unless `copy` is false, for a runtime that already hands each
 * output a buffer of its own (onnxruntime-node does; onnxruntime-web's may be views of memory the
 * session reuses). `value` is undefined when the output is missing or is not a tensor.
 */
export function outputToWire(name: string, value: OrtTensorLike | undefined, copy = true): WireTensor {
  if (!value) throw new BackendError('invalid_output', `output "${name}" is not a tensor`);
  const dtype = value.type as DType;
  if (!DTYPES.includes(dtype)) {
    throw new BackendError(
      'invalid_output',
      `output "${name}" has dtype ${value.type}, which shardhub does not carry`,
    );
  }
  const data = value.data;
  if (!ArrayBuffer.isView(data)) throw new BackendError('invalid_output', `output "${name}" has no CPU data`);
  const bytes = bytesOf(data);
  return { name, dtype, dims: [...value.dims], data: copy ? bytes.slice() : bytes };
}
