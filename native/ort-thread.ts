/**
 * Entry of a session thread (a `worker_threads` Worker): hosts one {@link OrtSession} so its
 * synchronous `run` blocks this thread, not the node's event loop, and N runners compute in
 * parallel. Speaks the tagged messages of `ort-threaded.ts`; tensor buffers are transferred.
 */
import { parentPort } from 'node:worker_threads';
import { BackendError, classifyError, errorMessage } from '../worker/backend.ts';
import type { FromThread, ToThread } from './ort-threaded.ts';
import { OrtSession } from './ort-session.ts';

const port = parentPort;
if (!port) throw new Error('ort-thread.ts must run in a worker thread');

let session: OrtSession | undefined;

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
      session.run(msg.items).then(
        (outputs) => {
          // Outputs own their buffers (copied out of onnxruntime): hand them over without a copy.
          const transfer = outputs.flatMap((o) => o.map((t) => t.data.buffer as ArrayBuffer));
          send({ type: 'result', id: msg.id, outputs }, [...new Set(transfer)]);
        },
        (err: unknown) => send(failure(msg.id, err, 'run')),
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
