/** Matching workers against a job's requirements (and against `GET /api/workers` filters). */
import type { WorkerFilter } from '../store/store.ts';

/** The worker facts a filter can look at. */
export interface FilterableWorker {
  kind: string;
  backend: string;
  pool: string | null;
  cores: number;
  gpuMemoryBytes: number | null;
}

/** Whether a worker meets every field set in the filter. */
export function matchesFilter(w: FilterableWorker, f: WorkerFilter | null | undefined): boolean {
  if (!f) return true;
  if (f.kind !== undefined && w.kind !== f.kind) return false;
  if (f.backend !== undefined && w.backend !== f.backend) return false;
  if (f.pool !== undefined && w.pool !== f.pool) return false;
  if (f.minCores !== undefined && w.cores < f.minCores) return false;
  if (f.minGpuMemoryBytes !== undefined && (w.gpuMemoryBytes ?? 0) < f.minGpuMemoryBytes) return false;
  return true;
}
