/**
 * WebGPU detection and the choice of provider, on the page's main thread.
 *
 * `auto` takes WebGPU when the browser offers a hardware adapter. A *fallback* adapter (a software
 * rasterizer such as SwiftShader, `info.isFallbackAdapter`) computes on the CPU far slower than
 * WASM does (PaddleOCR detection: ~7 s vs ~0.2 s per image), so `auto` takes WASM there and says so;
 * `?backend=webgpu` still forces it (the tests do).
 */
import type { Capabilities } from '../../protocol/events.ts';
import type { EngineBackend } from '../inference/messages.ts';

/** What the page asks for: `auto`, or one provider. */
export type BackendChoice = 'auto' | EngineBackend;

/** What `navigator.gpu` offers on this machine. */
export type GpuReport =
  | { available: false; reason: string }
  | {
      available: true;
      vendor: string;
      architecture: string;
      device: string;
      description: string;
      /** A software adapter (no GPU behind it). */
      fallback: boolean;
      features: string[];
      limits: Record<string, number>;
    };

/** The adapter limits worth showing and reporting (the full list is long). */
export const REPORTED_LIMITS = [
  'maxBufferSize',
  'maxStorageBufferBindingSize',
  'maxComputeWorkgroupStorageSize',
  'maxComputeInvocationsPerWorkgroup',
  'maxComputeWorkgroupSizeX',
  'maxComputeWorkgroupsPerDimension',
] as const;

/** Features that matter to onnxruntime-web, listed first when shown. */
export const NOTABLE_FEATURES = ['shader-f16', 'subgroups', 'timestamp-query'] as const;

/** Asks the browser for a WebGPU adapter and describes it, or says why there is none. */
export async function detectWebGpu(): Promise<GpuReport> {
  if (!isSecureContext)
    return { available: false, reason: 'WebGPU needs a secure context (HTTPS or localhost)' };
  if (!('gpu' in navigator) || !navigator.gpu)
    return { available: false, reason: 'this browser has no WebGPU (navigator.gpu)' };
  let adapter: GPUAdapter | null;
  try {
    adapter = await navigator.gpu.requestAdapter({ powerPreference: 'high-performance' });
  } catch (err) {
    return {
      available: false,
      reason: `requestAdapter failed: ${err instanceof Error ? err.message : String(err)}`,
    };
  }
  if (!adapter)
    return {
      available: false,
      reason: 'the browser offered no WebGPU adapter (blocklisted or disabled GPU)',
    };
  const info = adapter.info;
  const limits: Record<string, number> = {};
  for (const name of REPORTED_LIMITS) {
    const v = adapter.limits[name];
    if (typeof v === 'number') limits[name] = v;
  }
  const features = [...adapter.features].filter((f): f is string => typeof f === 'string').sort();
  const legacy = (adapter as GPUAdapter & { isFallbackAdapter?: boolean }).isFallbackAdapter;
  return {
    available: true,
    vendor: info.vendor,
    architecture: info.architecture,
    device: info.device,
    description: info.description,
    fallback: Boolean((info as GPUAdapterInfo & { isFallbackAdapter?: boolean }).isFallbackAdapter ?? legacy),
    features,
    limits,
  };
}

/** A short name for an adapter, e.g. "google swiftshader" or "nvidia ampere". */
export function adapterName(gpu: Extract<GpuReport, { available: true }>): string {
  return (
    gpu.description ||
    [gpu.vendor, gpu.architecture, gpu.device].filter(Boolean).join(' ') ||
    'WebGPU adapter'
  );
}

/** Picks the provider for a choice and what the adapter offers, with the reason in words. */
export function chooseBackend(
  choice: BackendChoice,
  gpu: GpuReport,
): { backend: EngineBackend; reason: string } {
  if (choice === 'wasm') {
    return {
      backend: 'wasm',
      reason: gpu.available
        ? `WASM requested (?backend=wasm); WebGPU adapter ${adapterName(gpu)} left unused`
        : `WASM requested (?backend=wasm)`,
    };
  }
  if (!gpu.available) {
    return {
      backend: 'wasm',
      reason: `${choice === 'webgpu' ? 'WebGPU requested, but ' : ''}${gpu.reason}; using WASM`,
    };
  }
  const name = adapterName(gpu);
  if (choice === 'webgpu')
    return { backend: 'webgpu', reason: `WebGPU requested (?backend=webgpu) on ${name}` };
  if (gpu.fallback) {
    return {
      backend: 'wasm',
      reason: `the only WebGPU adapter, ${name}, is a software fallback, slower than WASM; using WASM (?backend=webgpu forces it)`,
    };
  }
  return { backend: 'webgpu', reason: `WebGPU adapter ${name}` };
}

/**
 * A sensible WASM thread count: half the cores, at most 4 (onnxruntime-web's own default: it leaves
 * the contributor's machine usable), and 1 without cross-origin isolation (no SharedArrayBuffer).
 */
export function defaultThreads(cores: number, isolated: boolean): number {
  if (!isolated) return 1;
  return Math.max(1, Math.min(4, Math.ceil(cores / 2)));
}

/** The GPU as registered with the hub (absent when WebGPU is not available). */
export function gpuCapabilities(gpu: GpuReport): Capabilities['gpu'] | undefined {
  if (!gpu.available) return undefined;
  return {
    name: adapterName(gpu).slice(0, 128),
    vendor: gpu.vendor.slice(0, 128) || undefined,
    architecture: gpu.architecture.slice(0, 128) || undefined,
    features: gpu.features.slice(0, 64).map((f) => f.slice(0, 64)),
    limits: { ...gpu.limits },
  };
}
