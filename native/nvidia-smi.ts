/** NVIDIA GPUs as `nvidia-smi` reports them: name and memory, for capabilities and heartbeats. */
import { execFile } from 'node:child_process';

/** An NVIDIA GPU as `nvidia-smi` reports it. */
export interface GpuInfo {
  name: string;
  memoryTotalBytes: number;
  memoryUsedBytes: number;
}

const MIB = 1024 * 1024;

/**
 * Asks `nvidia-smi` for the first GPU's name and memory. Resolves undefined (silently) when there
 * is no `nvidia-smi`, no GPU, or the output cannot be read.
 */
export function detectNvidiaGpu(timeoutMs = 3000, env?: NodeJS.ProcessEnv): Promise<GpuInfo | undefined> {
  return new Promise((resolve) => {
    execFile(
      'nvidia-smi',
      ['--query-gpu=name,memory.total,memory.used', '--format=csv,noheader,nounits'],
      { timeout: timeoutMs, windowsHide: true, ...(env ? { env } : {}) },
      (err, stdout) => {
        if (err) return resolve(undefined);
        resolve(parseNvidiaSmi(stdout)[0]);
      },
    );
  });
}

/** Parses `nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv,noheader,nounits` (MiB). */
export function parseNvidiaSmi(stdout: string): GpuInfo[] {
  const gpus: GpuInfo[] = [];
  for (const line of stdout.split(/\r?\n/)) {
    const parts = line.split(',').map((s) => s.trim());
    if (parts.length < 3) continue;
    const used = Number(parts.pop());
    const total = Number(parts.pop());
    const name = parts.join(',');
    if (!name || !Number.isFinite(total) || !Number.isFinite(used)) continue;
    gpus.push({ name, memoryTotalBytes: total * MIB, memoryUsedBytes: used * MIB });
  }
  return gpus;
}
