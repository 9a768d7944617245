/**
 * Entry of a session thread (a `worker_threads` Worker): hosts one {@link OrtSession} so its
 * synchronous `run` blocks this thread, not the node's event loop, and N runners compute in
 * parallel. Speaks the tagged messages of `ort-threaded.ts`; tensor buffers are transferred.
 */
import { parentPort } from 'node:worker_threads';
import type { WireTensor } from '../protocol/tensor.ts';
import { BackendError, classifyError, errorMessage } from '../worker/backend.ts';
import type { FromThread, SlotTensor, ToThread } from './ort-threaded.ts';
import { OrtSession } from './ort-session.ts';

const port = parentPort;
if (!port) throw new Error('ort-thread.ts must run in a worker thread');

let session: OrtSession | undefined;

/** Input slots shared by the main thread, by id. */
const slots = new Map<number, SharedArrayBuffer>();

/**
 * Buffers of this thread's own that a batch's inputs are copied into from their slot (onnxruntime-node
 * refuses shared memory), one per input position and size, reused by every batch: runs here go one
 * at a time (`queue`), and a session is done with its inputs when its run returns.
 */
const scratch = new Map<string, Uint8Array>();

function ownCopy(slot: SharedArrayBuffer, t: SlotTensor, j: number): WireTensor {
  const key = `${j}:${t.byteLength}`;
  let data = scratch.get(key);
  if (!data) {
    if (scratch.size >= 16) scratch.clear(); // items of many sizes: keep the latest only
    data = new Uint8Array(t.byteLength);
    scratch.set(key, data);
  }
  data.set(new Uint8Array(slot, t.offset, t.byteLength));
  return { name: t.name, dtype: t.dtype, dims: t.dims, data };
}

/** Runs in order of arrival, one at a time (several may be posted while one computes). */
let queue: Promise<unknown> = Promise.resolve();

function send(msg: FromThread, transfer: ArrayBuffer[] = []): void {
  (port as NonNullable<typeof port>).postMessage(msg, transfer);
}

function failure(id: number | null, err: unknown, phase: 'load' | 'run'): FromThread {
  const category = err instanceof BackendError ? err.category : classifyError(err, phase);
  return { type: 'error', id, category, message: errorMessage(err) };
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
      const run = session;
      const slot = slots.get(msg.slot);
      if (!slot) {
        send({ type: 'error', id: msg.id, category: 'other', message: `no input slot ${msg.slot}` });
        return;
      }
      const work = queue.then(async () => {
        const outputs: WireTensor[][] = [];
        for (const batch of msg.batches)
          outputs.push(await run.runInputs(batch.map((t, j) => ownCopy(slot, t, j))));
        return outputs;
      });
      queue = work.catch(() => undefined);
      work.then(
        (outputs) => {
          // Outputs own their buffers (onnxruntime-node's copies): hand them over without a copy.
          const transfer = outputs.flatMap((o) => o.map((t) => t.data.buffer as ArrayBuffer));
          send({ type: 'result', id: msg.id, outputs }, [...new Set(transfer)]);
        },
        (err: unknown) => send(failure(msg.id, err, 'run')),
      );
      return;
    }
    case 'slot':
      slots.set(msg.slot, msg.buffer);
      return;
    case 'forget':
      slots.delete(msg.slot);
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
