/**
 * Entry of a session thread (a `worker_threads` Worker): hosts one {@link OrtSession} so its
 * synchronous `run` blocks this thread, not the node's event loop, and N runners compute in
 * parallel. Speaks the tagged messages of `ort-threaded.ts`; tensor buffers are transferred.
 */
import { parentPort } from 'node:worker_threads';
import { asTypedArray, type WireTensor } from '../protocol/tensor.ts';
import { BackendError, classifyError, errorMessage } from '../worker/backend.ts';
import type { BufferTensor, FromThread, ToThread } from './ort-threaded.ts';
import { OrtSession } from './ort-session.ts';
import { firstNonFinite } from '../worker/wire.ts';

const port = parentPort;
if (!port) throw new Error('ort-thread.ts must run in a worker thread');

let session: OrtSession | undefined;
/** Set by a test's `lose-device`: the next run fails as a lost device does. */
let deviceLost = false;

function send(msg: FromThread, transfer: ArrayBuffer[] = []): void {
  (port as NonNullable<typeof port>).postMessage(msg, transfer);
}

function failure(
  id: number | null,
  err: unknown,
  phase: 'load' | 'run',
): Extract<FromThread, { type: 'error' }> {
  const category = err instanceof BackendError ? err.category : classifyError(err, phase);
  return { type: 'error', id, category, message: errorMessage(err) };
}

/**
 * Whether a float output holds no NaN or infinity, checked here while onnxruntime's writes are
 * still in this core's cache: the main thread's check of the same bytes, read cold, cost it twice
 * as long. Other dtypes (and float16, checked on the main thread) answer false: not vouched for.
 */
function finite(t: WireTensor): boolean {
  if (t.dtype !== 'float32' && t.dtype !== 'float64') return false;
  return firstNonFinite(asTypedArray(t) as Float32Array | Float64Array) < 0;
}

/** A batch's inputs as views of the buffer the main thread wrote them into: no copy. */
function viewsOf(buffer: ArrayBuffer, batch: BufferTensor[]): WireTensor[] {
  return batch.map((t) => ({
    name: t.name,
    dtype: t.dtype,
    dims: t.dims,
    data: new Uint8Array(buffer, t.offset, t.byteLength),
  }));
}

port.on('message', (msg: ToThread) => {
  switch (msg.type) {
    case 'load':
      OrtSession.create(msg.model, msg.bytes, msg.options).then(
        (s) => {
          session = s;
          send({ type: 'loaded' });
        },
        (err: unknown) => send(failure(null, err, 'load')),
      );
      return;
    case 'run': {
      if (!session) {
        send({ type: 'error', id: msg.id, category: 'other', message: 'no model loaded' });
        return;
      }
      const { id, buffer, batches } = msg;
      const run = session;
      (async () => {
        if (deviceLost) throw new BackendError('device_lost', 'WebGPU device lost (lose-device, a test)');
        const outputs: WireTensor[][] = [];
        for (const batch of batches) outputs.push(await run.runInputs(viewsOf(buffer, batch)));
        return outputs;
      })().then(
        (outputs) => {
          // Outputs own their buffers (onnxruntime-node's copies): hand them over without a copy,
          // and the inputs' buffer back for the next batch.
          const transfer = new Set([
            buffer,
            ...outputs.flatMap((o) => o.map((t) => t.data.buffer as ArrayBuffer)),
          ]);
          send({ type: 'result', id, outputs, finite: outputs.map((o) => o.map(finite)), buffer }, [
            ...transfer,
          ]);
        },
        (err: unknown) => send({ ...failure(id, err, 'run'), buffer }, [buffer]),
      );
      return;
    }
    case 'lose-device':
      deviceLost = true;
      return;
    case 'dispose':
      void (session?.dispose() ?? Promise.resolve()).finally(() => send({ type: 'disposed' }));
      return;
    default: {
      const never: never = msg;
      send({
        type: 'error',
        id: null,
        category: 'other',
        message: `unknown message ${JSON.stringify(never)}`,
      });
    }
  }
});
