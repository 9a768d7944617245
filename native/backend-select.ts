/**
 * Which onnxruntime-node provider a native node runs, and why, in words for its log and the hub.
 *
 * `auto` takes, in order: `cuda` where its provider is installed and starts; `webgpu` where Dawn
 * finds an adapter that is a real GPU; `cpu` otherwise. A software adapter (SwiftShader, llvmpipe)
 * computes on the CPU, many times slower than the CPU provider, so only `--backend webgpu` takes it.
 * A forced provider that cannot start falls back to `cpu`, saying why, as `auto` does: a node that
 * runs slowly is more use to its owner than one that does not start.
 *
 * The checks go cheapest first and stop at the first that decides: a CPU machine never loads the
 * CUDA libraries, and a working CUDA node never starts Dawn.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import type { AdapterInfo, WebGpuProbe } from './gpu-probe.ts';

const require = createRequire(import.meta.url);

/** What the node is asked to run: `auto`, or one provider. */
export type BackendPreference = 'auto' | 'cpu' | 'cuda' | 'webgpu';

/** A provider the node can run. */
export type OrtProvider = 'cuda' | 'webgpu' | 'cpu';

/** Whether CUDA can run here, and if not why. */
export type CudaCheck = { ok: true; reason: string } | { ok: false; reason: string };

/** What WebGPU offers here: an adapter (real or software), or why there is none. */
export type WebGpuCheck =
  { ok: true; adapter: AdapterInfo; reason: string } | { ok: false; reason: string; detail?: string };

/** The decision. */
export interface BackendChoice {
  name: OrtProvider;
  reason: string;
  /** The WebGPU adapter the node runs on (with `webgpu`). */
  adapter?: AdapterInfo;
}

/** A short name for an adapter in reasons, e.g. "SwiftShader Device (Subzero) (software)". */
export function adapterLabel(a: AdapterInfo): string {
  return `${a.name}${a.software ? ' (software)' : ''}`;
}

/** The message of onnxruntime's WebGPU start failure without its source location. */
function shortError(message: string): string {
  const m = /Failed to get a WebGPU adapter:\s*(.*)$/s.exec(message);
  return (m ? m[1] : message)?.trim().slice(0, 300) ?? message;
}

/** Reads a probe as a {@link WebGpuCheck}: the reasons a node owner sees when WebGPU is missing. */
export function webGpuCheck(probe: WebGpuProbe): WebGpuCheck {
  if (!probe.provider) return { ok: false, reason: 'this onnxruntime-node build has no WebGPU provider' };
  if (!probe.loader.found)
    return {
      ok: false,
      reason: 'No Vulkan loader (install libvulkan1)',
      ...(probe.loader.error ? { detail: probe.loader.error } : {}),
    };
  if (!probe.adapter.ok) {
    const noDriver = probe.drivers.length === 0;
    const detail = [shortError(probe.adapter.error), probe.dawnWarnings].filter(Boolean).join('; ');
    return {
      ok: false,
      reason: noDriver
        ? "no WebGPU adapter: no Vulkan driver installed (install the GPU vendor's driver with its Vulkan part)"
        : `no WebGPU adapter: Dawn found no Vulkan device it supports (${shortError(probe.adapter.error)}; install or update the GPU vendor's Vulkan driver)`,
      detail,
    };
  }
  if (!probe.info)
    return {
      ok: true,
      adapter: {
        name: 'unknown Vulkan adapter',
        vendor: '',
        architecture: '',
        device: '',
        driver: '',
        software: false,
        source: 'drivers',
      },
      reason: 'WebGPU adapter found (install vulkan-tools to name it)',
    };
  return { ok: true, adapter: probe.info, reason: `WebGPU adapter ${adapterLabel(probe.info)}` };
}

/**
 * Decides, from the checks already made, which provider runs (see the file comment). `cuda` and
 * `webgpu` are functions so that only the checks the decision needs are made.
 */
export async function decideBackend(
  prefer: BackendPreference,
  cuda: () => Promise<CudaCheck>,
  webgpu: () => Promise<WebGpuCheck>,
): Promise<BackendChoice> {
  switch (prefer) {
    case 'cpu':
      return { name: 'cpu', reason: 'cpu requested (--backend cpu)' };
    case 'cuda': {
      const c = await cuda();
      return c.ok
        ? { name: 'cuda', reason: `cuda requested (--backend cuda): ${c.reason}` }
        : { name: 'cpu', reason: `cuda requested (--backend cuda), but ${c.reason}; using cpu` };
    }
    case 'webgpu': {
      const w = await webgpu();
      if (!w.ok)
        return { name: 'cpu', reason: `webgpu requested (--backend webgpu), but ${w.reason}; using cpu` };
      const slow = w.adapter.software ? ', a software adapter: slower than cpu' : '';
      return {
        name: 'webgpu',
        reason: `webgpu requested (--backend webgpu) on ${adapterLabel(w.adapter)}${slow}`,
        adapter: w.adapter,
      };
    }
    case 'auto': {
      const c = await cuda();
      if (c.ok) return { name: 'cuda', reason: c.reason };
      const w = await webgpu();
      if (w.ok && !w.adapter.software)
        return { name: 'webgpu', reason: `${w.reason} (cuda: ${c.reason})`, adapter: w.adapter };
      const why = w.ok
        ? `the only WebGPU adapter, ${adapterLabel(w.adapter)}, is slower than cpu (--backend webgpu forces it)`
        : w.reason;
      return { name: 'cpu', reason: `cuda: ${c.reason}; webgpu: ${why}; using cpu` };
    }
    default: {
      const never: never = prefer;
      throw new Error(`unknown backend ${String(never)}`);
    }
  }
}

/** The directory holding onnxruntime-node's native binding and provider libraries. */
function bindingDir(): string {
  const root = dirname(dirname(require.resolve('onnxruntime-node')));
  return join(root, 'bin', 'napi-v6', process.platform, process.arch);
}

function cudaLibraryName(): string {
  if (process.platform === 'win32') return 'onnxruntime_providers_cuda.dll';
  if (process.platform === 'darwin') return 'libonnxruntime_providers_cuda.dylib';
  return 'libonnxruntime_providers_cuda.so';
}

/**
 * Whether CUDA runs here: the provider is in this build, its library is installed, and a session
 * starts on it (`start` makes one on a tiny model). Cheap facts first.
 */
export async function checkCuda(
  supported: readonly { name: string }[],
  start: () => Promise<void>,
  gpuName?: string,
): Promise<CudaCheck> {
  if (!supported.some((b) => b.name === 'cuda'))
    return { ok: false, reason: 'this onnxruntime-node build has no CUDA provider' };
  if (!existsSync(join(bindingDir(), cudaLibraryName())))
    return {
      ok: false,
      reason: 'CUDA provider not installed (install it with `npm run install-cuda`)',
    };
  try {
    await start();
  } catch (err) {
    const message = err instanceof Error ? err.message : String(err);
    return { ok: false, reason: `CUDA provider failed to start (${message.slice(0, 300)})` };
  }
  return { ok: true, reason: gpuName ? `CUDA provider on ${gpuName}` : 'CUDA provider started' };
}
