/**
 * onnxruntime-web as shardhub runs it, shared by the inference worker and the standalone benchmark
 * page so both measure the same thing.
 *
 * One build serves both providers: the default `onnxruntime-web` entry (JSEP: WebGPU and WASM in
 * one binary). Its `.wasm` and Emscripten glue (`.mjs`) are emitted by Vite as same-origin assets
 * and named through `env.wasm.wasmPaths`, because the hub serves pages with
 * `Cross-Origin-Embedder-Policy: require-corp` (no CDN) and because multi-threaded WASM starts its
 * pthread workers from the glue's own URL: if the glue were bundled into our worker, every pthread
 * would boot our worker script too.
 */
import * as ort from 'onnxruntime-web';
import wasmUrl from 'onnxruntime-web/ort-wasm-simd-threaded.jsep.wasm?url&no-inline';
import glueUrl from 'onnxruntime-web/ort-wasm-simd-threaded.jsep.mjs?url&no-inline';
import type { EngineBackend, EngineInfo } from './messages.ts';

export { ort };

/**
 * Sets onnxruntime-web's global environment. Call once per worker, before the first session:
 * onnxruntime-web reads these when it initializes.
 */
export function configureOrt(numThreads: number): void {
  const base = self.location.href;
  ort.env.wasm.wasmPaths = { wasm: new URL(wasmUrl, base).href, mjs: new URL(glueUrl, base).href };
  // Threads need SharedArrayBuffer, i.e. a cross-origin isolated page (the hub sends COOP/COEP).
  ort.env.wasm.numThreads = crossOriginIsolated ? Math.max(1, Math.floor(numThreads)) : 1;
  // Already in a worker: onnxruntime-web's own proxy worker would only add a hop.
  ort.env.wasm.proxy = false;
  ort.env.logLevel = 'error';
}

/** The result of {@link initOrt}: what runs, and the GPU device for webgpu. */
export interface OrtReady {
  info: EngineInfo;
  device?: GPUDevice;
}

/**
 * Configures onnxruntime-web and, for webgpu, has it create its GPU device now (rather than at the
 * first session), so a machine whose WebGPU cannot give a device fails here, before any model.
 */
export async function initOrt(backend: EngineBackend, numThreads: number): Promise<OrtReady> {
  configureOrt(numThreads);
  const info: EngineInfo = {
    backend,
    numThreads: ort.env.wasm.numThreads ?? 1,
    crossOriginIsolated,
    ortVersion: ort.env.versions.web ?? ort.env.versions.common,
  };
  if (backend !== 'webgpu') return { info };
  if (!('gpu' in navigator) || !navigator.gpu)
    throw new Error('navigator.gpu is not available in the worker');
  // onnxruntime-web creates its device with the first WebGPU session; a one-node probe forces that.
  const probe = await ort.InferenceSession.create(probeModel(), sessionOptions('webgpu'));
  await probe.release();
  const device = await ort.env.webgpu.device;
  if (!device) throw new Error('onnxruntime-web started WebGPU without a device');
  const a = device.adapterInfo;
  if (a) info.adapter = { vendor: a.vendor, architecture: a.architecture, description: a.description };
  return { info, device };
}

/**
 * A one-node ONNX model (`y = Identity(x)`, float32[1]), built with `onnx-proto` like
 * `native/ort-backend.ts`'s probe: enough to make onnxruntime-web start a provider.
 */
const PROBE_MODEL =
  'CAgSDnNoYXJkaHViLXByb2JlOjsKEAoBeBIBeSIISWRlbnRpdHkSBXByb2JlWg8KAXgSCgoICAESBAoCCAFiDwoBeRIKCggIARIECgIIAUIECgAQEQ==';

function probeModel(): Uint8Array {
  return Uint8Array.from(atob(PROBE_MODEL), (c) => c.charCodeAt(0));
}

/**
 * Session options for a provider: that provider alone, so a provider that cannot start fails the
 * session (and the page says so) instead of quietly running on the next one in the list.
 */
export function sessionOptions(backend: EngineBackend): ort.InferenceSession.SessionOptions {
  return {
    executionProviders: [backend],
    graphOptimizationLevel: 'all',
    logSeverityLevel: 3,
  };
}
