/**
 * Entry of `standalone.html`: onnxruntime-web without shardhub, for `npm run bench -- browser`.
 * `window.shardhubStandalone(request)` fetches the model's bytes from the hub, runs it in a fresh
 * module worker ({@link StandaloneRequest}) and resolves with items/s; the page shows the figures.
 */
import type { FromStandalone, StandaloneRequest, StandaloneResult, ToStandalone } from './messages.ts';

declare global {
  interface Window {
    /** Runs one standalone benchmark (see the file comment). */
    shardhubStandalone?: (req: StandaloneRequest) => Promise<StandaloneResult>;
  }
}

async function run(req: StandaloneRequest): Promise<StandaloneResult> {
  const res = await fetch(req.model.url);
  if (!res.ok) throw new Error(`model ${req.model.name}: HTTP ${res.status}`);
  const bytes = new Uint8Array(await res.arrayBuffer());
  const worker = new Worker(new URL('./standalone-worker.ts', import.meta.url), {
    type: 'module',
    name: 'standalone',
  });
  try {
    return await new Promise<StandaloneResult>((resolve, reject) => {
      worker.addEventListener('message', (e: MessageEvent<FromStandalone>) => {
        if (e.data.type === 'result') resolve(e.data.result);
        else reject(new Error(e.data.message));
      });
      worker.addEventListener('error', (e) => reject(new Error(e.message || 'worker failed')));
      worker.postMessage({ type: 'bench', request: req, bytes } satisfies ToStandalone, [bytes.buffer]);
    });
  } finally {
    worker.terminate();
  }
}

window.shardhubStandalone = async (req) => {
  const out = document.querySelector('output');
  if (out) out.textContent = `running ${req.model.name} on ${req.backend}…`;
  try {
    const r = await run(req);
    if (out)
      out.textContent = `${req.model.name} on ${r.info.backend}: ${r.itemsPerSec.toFixed(1)} items/s (${r.runs} runs of ${r.batchSize})`;
    return r;
  } catch (err) {
    if (out) out.textContent = `failed: ${err instanceof Error ? err.message : String(err)}`;
    throw err;
  }
};
