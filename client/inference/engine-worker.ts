/**
 * The inference worker (a module Web Worker): hosts onnxruntime-web and the sessions of one
 * provider, so inference never runs on the page's main thread. Speaks the messages of
 * `messages.ts`; requests are handled one at a time, in order (onnxruntime-web runs one inference
 * at a time anyway, and a `release` must not overtake the `run` before it), except the test hook
 * `lose-device`, which acts at once. Output buffers are transferred to the page.
 *
 * When the WebGPU device is lost, the worker says so (`device-lost`) and fails everything after
 * with `device_lost`: its sessions are gone with the device. The page then replaces the worker.
 */
import type { FailureCategory } from '../../protocol/events.ts';
import { toTypedArray, type WireTensor } from '../../protocol/tensor.ts';
import { BackendError, classifyError, errorMessage, outputToWire } from '../../worker/backend.ts';
import { runBatched } from '../../worker/batching.ts';
import type { EngineBackend, FromEngine, SessionModel, ToEngine } from './messages.ts';
import { initOrt, ort, sessionOptions } from './ort-setup.ts';

interface Hosted {
  model: SessionModel;
  session: ort.InferenceSession;
}

let backend: EngineBackend | undefined;
let device: GPUDevice | undefined;
/** Why the device was lost, once it was. */
let lostReason: string | undefined;
let nextSession = 0;
const sessions = new Map<number, Hosted>();
let chain: Promise<void> = Promise.resolve();

function send(msg: FromEngine, transfer: Transferable[] = []): void {
  self.postMessage(msg, { transfer });
}

/**
 * The error reply for a failed request. A WebGPU error may be the first sign of a lost device
 * (a destroyed device fails the run before `device.lost` settles): give the loss a moment to show,
 * so the items are reported as `device_lost` rather than `other`.
 */
async function failure(id: number, err: unknown, phase: 'load' | 'run'): Promise<FromEngine> {
  if (device && lostReason === undefined) {
    await Promise.race([device.lost, new Promise((resolve) => setTimeout(resolve, 100))]);
  }
  let category: FailureCategory = classifyError(err, phase);
  let message = errorMessage(err);
  if (lostReason !== undefined) {
    category = 'device_lost';
    message = `WebGPU device lost (${lostReason}): ${message}`;
  }
  return { type: 'error', id, category, message: message.slice(0, 1000) };
}

async function init(id: number, which: EngineBackend, numThreads: number): Promise<void> {
  if (backend) throw new Error(`already initialized for ${backend}`);
  const ready = await initOrt(which, numThreads);
  backend = which;
  device = ready.device;
  void device?.lost.then((info) => {
    lostReason = info.message || info.reason || 'unknown';
    send({ type: 'device-lost', reason: String(info.reason ?? 'unknown'), message: info.message ?? '' });
  });
  send({ type: 'initialized', id, info: ready.info });
}

async function load(id: number, model: SessionModel, bytes: Uint8Array): Promise<void> {
  if (!backend) throw new Error('not initialized');
  if (lostReason !== undefined) throw new BackendError('device_lost', 'the WebGPU device is lost');
  let session: ort.InferenceSession;
  try {
    session = await ort.InferenceSession.create(bytes, sessionOptions(backend));
  } catch (err) {
    throw new BackendError(classifyError(err, 'load'), `loading ${model.name}: ${errorMessage(err)}`, {
      cause: err,
    });
  }
  const handle = ++nextSession;
  sessions.set(handle, { model, session });
  send({ type: 'loaded', id, session: handle });
}

async function run(id: number, handle: number, items: WireTensor[][]): Promise<void> {
  const hosted = sessions.get(handle);
  if (!hosted) throw new Error(`no session ${handle}`);
  const outputs = await runBatched(hosted.model, items, (inputs) => runOne(hosted.session, inputs));
  // Every output owns its buffer (copied out of onnxruntime, then split per item): hand them over.
  const transfer = new Set<ArrayBuffer>();
  for (const out of outputs) for (const t of out) transfer.add(t.data.buffer as ArrayBuffer);
  send({ type: 'result', id, outputs }, [...transfer]);
}

async function runOne(session: ort.InferenceSession, inputs: WireTensor[]): Promise<WireTensor[]> {
  const feeds: Record<string, ort.Tensor> = {};
  for (const name of session.inputNames) {
    const t = inputs.find((i) => i.name === name);
    if (!t) throw new BackendError('other', `item has no input "${name}"`);
    feeds[name] = new ort.Tensor(t.dtype, toTypedArray(t), t.dims);
  }
  const results = await session.run(feeds);
  try {
    return session.outputNames.map((name) =>
      outputToWire(name, results[name] instanceof ort.Tensor ? results[name] : undefined),
    );
  } finally {
    for (const v of Object.values(results)) v.dispose();
  }
}

async function release(id: number, handle: number): Promise<void> {
  const hosted = sessions.get(handle);
  sessions.delete(handle);
  await hosted?.session.release().catch(() => undefined);
  send({ type: 'done', id });
}

async function handle(msg: ToEngine): Promise<void> {
  switch (msg.type) {
    case 'init':
      return init(msg.id, msg.backend, msg.numThreads).catch(async (err: unknown) =>
        send(await failure(msg.id, err, 'load')),
      );
    case 'load':
      return load(msg.id, msg.model, msg.bytes).catch(async (err: unknown) =>
        send(await failure(msg.id, err, 'load')),
      );
    case 'run':
      return run(msg.id, msg.session, msg.items).catch(async (err: unknown) =>
        send(await failure(msg.id, err, 'run')),
      );
    case 'release':
      return release(msg.id, msg.session);
    case 'lose-device':
      device?.destroy();
      send({ type: 'done', id: msg.id });
      return;
    default: {
      const never: never = msg;
      const id = (never as { id?: unknown }).id;
      send({
        type: 'error',
        id: typeof id === 'number' ? id : -1,
        category: 'other',
        message: `unknown message type ${JSON.stringify((never as { type?: unknown }).type)}`,
      });
    }
  }
}

self.addEventListener('message', (event: MessageEvent<ToEngine>) => {
  const msg = event.data;
  // A device loss comes when it comes, mid-run included: the simulated one does not wait its turn.
  if (msg.type === 'lose-device') {
    void handle(msg);
    return;
  }
  chain = chain.then(() => handle(msg)).catch(() => undefined);
});
