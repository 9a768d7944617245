/**
 * The messages between the page and its inference worker (`engine-worker.ts`): a union tagged by
 * `type` each way, handled in exhaustive switches. Every request carries an `id` that its reply
 * repeats; `device-lost` is the one message the worker sends on its own. Tensor buffers travel in
 * transfer lists, never as number arrays.
 */
import type { FailureCategory } from '../../protocol/events.ts';
import type { ModelInfo } from '../../protocol/model.ts';
import type { WireTensor } from '../../protocol/tensor.ts';

/** The onnxruntime-web execution providers a browser worker runs. */
export type EngineBackend = 'webgpu' | 'wasm';

/** What a model's session needs to know about the model (batching). */
export type SessionModel = Pick<ModelInfo, 'name' | 'batchable' | 'batchSize'>;

/** What the worker reports once onnxruntime-web is ready. */
export interface EngineInfo {
  backend: EngineBackend;
  /** WASM threads (1: single-threaded). */
  numThreads: number;
  crossOriginIsolated: boolean;
  /** onnxruntime-web's version. */
  ortVersion: string;
  /** The adapter of the device onnxruntime-web created (webgpu only). */
  adapter?: { vendor: string; architecture: string; description: string };
}

/** Page → worker. */
export type ToEngine =
  | { type: 'init'; id: number; backend: EngineBackend; numThreads: number }
  | { type: 'load'; id: number; model: SessionModel; bytes: Uint8Array }
  | { type: 'run'; id: number; session: number; items: WireTensor[][] }
  | { type: 'release'; id: number; session: number }
  /** Destroys the GPU device, as a driver reset would: for tests of the recovery path. */
  | { type: 'lose-device'; id: number };

/** Worker → page. */
export type FromEngine =
  | { type: 'initialized'; id: number; info: EngineInfo }
  | { type: 'loaded'; id: number; session: number }
  | { type: 'result'; id: number; outputs: WireTensor[][] }
  /** Reply to `release` and `lose-device`. */
  | { type: 'done'; id: number }
  | { type: 'error'; id: number; category: FailureCategory; message: string }
  | { type: 'device-lost'; reason: string; message: string };
