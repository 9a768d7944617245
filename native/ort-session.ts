/**
 * One onnxruntime-node session running a model's items, in whatever thread creates it: the main
 * thread (`threads: false`) or a session thread (`ort-thread.ts`). Items are batched per the model
 * (`worker/batching.ts`); errors become {@link BackendError}s with their failure category.
 */
import * as ort from 'onnxruntime-node';
import type { ModelInfo } from '../protocol/model.ts';
import { asTypedArray, type WireTensor } from '../protocol/tensor.ts';
import {
  BackendError,
  classifyError,
  errorMessage,
  outputToWire,
  type LoadedModel,
} from '../worker/backend.ts';
import { runBatched } from '../worker/batching.ts';

/**
 * Session options for a provider and a thread budget. Intra-op threads do not spin between parallel
 * sections: a node shares the machine with its own event loop (sockets, results) and often with a
 * hub, and a spinning pool thread takes their CPU, while a preempted one holds up every parallel
 * section; spinning does not buy speed back even alone (PaddleOCR detection on 2 threads).
 *
 * WebGPU sessions take their inputs from and give their outputs to CPU memory: onnxruntime-node
 * 1.30 can leave outputs on the device (`preferredOutputLocation: 'gpu-buffer'`), but reading such
 * an output back (`getData()`) aborts the process, and a node must send every output to the hub;
 * inputs on the device would need a `GPUBuffer`, which Node has no way to make. See docs/gpu.md.
 */
export function sessionOptions(
  provider: 'cuda' | 'webgpu' | 'cpu',
  intraOpNumThreads: number,
): ort.InferenceSession.SessionOptions {
  return {
    // Nodes a GPU provider does not implement run on the CPU provider, listed after it.
    executionProviders: provider === 'cpu' ? ['cpu'] : [provider, 'cpu'],
    intraOpNumThreads,
    interOpNumThreads: 1,
    executionMode: 'sequential',
    graphOptimizationLevel: 'all',
    logSeverityLevel: 3,
    extra: { session: { intra_op: { allow_spinning: '0' } } },
  };
}

/** A loaded onnxruntime-node session. Note: `run` blocks the calling thread while it computes. */
export class OrtSession implements LoadedModel {
  private disposed = false;

  private constructor(
    private readonly model: Pick<ModelInfo, 'name' | 'batchable' | 'batchSize'>,
    private readonly session: ort.InferenceSession,
  ) {}

  /** Loads model bytes; a failure is a `model_load` (or `out_of_memory`) {@link BackendError}. */
  static async create(
    model: Pick<ModelInfo, 'name' | 'batchable' | 'batchSize'>,
    bytes: Uint8Array,
    options: ort.InferenceSession.SessionOptions,
  ): Promise<OrtSession> {
    try {
      return new OrtSession(model, await ort.InferenceSession.create(bytes, options));
    } catch (err) {
      throw new BackendError(classifyError(err, 'load'), `loading ${model.name}: ${errorMessage(err)}`, {
        cause: err,
      });
    }
  }

  run(items: WireTensor[][]): Promise<WireTensor[][]> {
    if (this.disposed) return Promise.reject(new Error('session is disposed'));
    return runBatched(this.model, items, (inputs) => this.runInputs(inputs));
  }

  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    await this.session.release();
  }

  /**
   * Runs one set of inputs as they are (one item, or a batch already concatenated along dim 0):
   * the session thread's entry, whose batches are made on the node's main thread.
   */
  async runInputs(inputs: WireTensor[]): Promise<WireTensor[]> {
    if (this.disposed) throw new Error('session is disposed');
    const feeds: Record<string, ort.Tensor> = {};
    for (const name of this.session.inputNames) {
      const t = inputs.find((i) => i.name === name);
      if (!t) throw new BackendError('other', `item has no input "${name}"`);
      // A view of the input's bytes when aligned (the session thread's batch buffer always is): the
      // run only reads them, and a copy cost 1.2 MB of memory traffic per PaddleOCR item.
      feeds[name] = new ort.Tensor(t.dtype, asTypedArray(t), t.dims);
    }
    let results: ort.InferenceSession.OnnxValueMapType;
    try {
      results = await this.session.run(feeds);
    } catch (err) {
      throw new BackendError(classifyError(err, 'run'), errorMessage(err), { cause: err });
    }
    // onnxruntime-node copies each output into an ArrayBuffer of its own (a unit test checks that a
    // later run leaves earlier outputs alone): no second copy.
    return this.session.outputNames.map((name) =>
      outputToWire(name, results[name] instanceof ort.Tensor ? results[name] : undefined, false),
    );
  }
}
