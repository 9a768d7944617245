/**
 * Entry of a session thread (a `worker_threads` Worker): hosts one {@link OrtSession} so its
 * synchronous `run` blocks this thread, not the node's event loop, and N runners compute in
 * parallel. Speaks the tagged messages of `ort-threaded.ts`: inputs come in shared memory and are
 * copied once into this thread's own buffers, outputs go back transferred.
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

/**
 * This thread's own copies of the shared input buffers, one per run in progress: onnxruntime-node
 * refuses shared memory, so each run's inputs are copied out of the main thread's buffer once.
 */
const copies: ArrayBuffer[] = [];

/** A run's inputs, copied out of the shared `from` into a buffer of this thread's. */
function copyOf(from: SharedArrayBuffer, batches: BufferTensor[][]): ArrayBuffer {
  let end = 0;
  for (const batch of batches) for (const t of batch) end = Math.max(end, t.offset + t.byteLength);
  const i = copies.findIndex((b) => b.byteLength >= end);
  const into =
    i >= 0
      ? (copies.splice(i, 1)[0] as ArrayBuffer)
      : new ArrayBuffer(Math.max(1, Math.ceil(end / 2 ** 20)) * 2 ** 20);
  new Uint8Array(into, 0, end).set(new Uint8Array(from, 0, end));
  return into;
}

/** A batch's inputs as views of this thread's copy of them. */
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
      const { id, batches } = msg;
      const run = session;
      const buffer = copyOf(msg.buffer, batches);
      (async () => {
        const outputs: WireTensor[][] = [];
        for (const batch of batches) outputs.push(await run.runInputs(viewsOf(buffer, batch)));
        return outputs;
      })().then(
        (outputs) => {
          copies.push(buffer);
          // Outputs own their buffers (onnxruntime-node's copies): hand them over without a copy.
          const transfer = new Set(outputs.flatMap((o) => o.map((t) => t.data.buffer as ArrayBuffer)));
          send({ type: 'result', id, outputs, finite: outputs.map((o) => o.map(finite)) }, [...transfer]);
        },
        (err: unknown) => {
          copies.push(buffer);
          send(failure(id, err, 'run'));
        },
      );
      return;
    }
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
