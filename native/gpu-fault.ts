/**
 * The GPU fault rig, for tests of a native node whose GPU keeps failing (`fault.ts` lies about
 * outputs instead): set `SHARDHUB_FAULT_GPU=1` in a node's environment, never on a real node.
 * With it:
 * - a software WebGPU adapter (SwiftShader, the only one a machine without a GPU has) counts as a
 *   real GPU, so `--backend auto` takes it as it would a real one ({@link asRealGpu}); only an
 *   automatic choice is given up when the GPU keeps failing (`ort-backend.ts`);
 * - `kill -USR2 <pid>` makes every run on the GPU from then on fail as a lost device
 *   (`OrtBackend.failGpuRuns`): onnxruntime-node gives no handle on its Dawn device to destroy.
 */
import type { WebGpuCheck } from './backend-select.ts';

/** The variable that turns the rig on. */
export const GPU_FAULT_ENV = 'SHARDHUB_FAULT_GPU';

/** Whether the GPU fault rig is on (see {@link GPU_FAULT_ENV}). */
export function gpuFaultRig(env: NodeJS.ProcessEnv = process.env): boolean {
  return env[GPU_FAULT_ENV] === '1';
}

/** The rig's view of a WebGPU check: a software adapter is presented as a real GPU, and says so. */
export function asRealGpu(check: WebGpuCheck): WebGpuCheck {
  if (!check.ok || !check.adapter.software) return check;
  return {
    ...check,
    adapter: { ...check.adapter, software: false },
    reason: `${check.reason}, taken as a real GPU (${GPU_FAULT_ENV}=1)`,
  };
}
