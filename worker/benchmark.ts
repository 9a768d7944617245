/**
 * A worker's benchmark on a real model: calibration inputs at the model's batch size, run on all of
 * the worker's runners in parallel. One warm-up run per runner (session initialization, allocator
 * growth and JIT are not throughput), then timed runs until at least `minMs` have passed or
 * `maxRuns` runs were made per runner, with at least `minRuns`. The reply is items per second of
 * all runners together: that figure is the worker's weight.
 */
import type { BenchmarkReply } from '../protocol/events.ts';
import type { ModelInfo } from '../protocol/model.ts';
import type { LoadedModel } from './backend.ts';
import { calibrationInputs } from './calibration.ts';

/** Limits of one benchmark. */
export interface BenchmarkOptions {
  /** Keep running until this much time has passed (default 1000 ms)... */
  minMs?: number;
  /** ...or this many timed runs per runner were made (default 30)... */
  maxRuns?: number;
  /** ...but never fewer than this (default 3). */
  minRuns?: number;
  /** Stops between runs; the benchmark then rejects with the signal's reason. */
  signal?: AbortSignal;
}

/** Items per run in a benchmark: the model's batch size when it is batchable, else 1. */
export function benchmarkBatchSize(model: Pick<ModelInfo, 'batchable' | 'batchSize'>): number {
  return model.batchable ? Math.max(1, Math.floor(model.batchSize)) : 1;
}

/** Benchmarks a model on the given runners (each its own loaded session) and returns the reply. */
export async function runBenchmark(
  model: ModelInfo,
  runners: readonly LoadedModel[],
  opts: BenchmarkOptions = {},
): Promise<BenchmarkReply> {
  if (runners.length === 0) throw new RangeError('runBenchmark needs at least one runner');
  const minMs = opts.minMs ?? 1000;
  const maxRuns = opts.maxRuns ?? 30;
  const minRuns = opts.minRuns ?? 3;
  const batchSize = benchmarkBatchSize(model);
  // Every item of a run gets its own seed, so a batch is not the same item repeated.
  const items = Array.from({ length: batchSize }, (_, i) =>
    calibrationInputs(model, model.calibration.seed + i),
  );

  await Promise.all(runners.map((r) => r.run(items)));
  opts.signal?.throwIfAborted();

  const start = performance.now();
  const counts = await Promise.all(
    runners.map(async (r) => {
      let runs = 0;
      while (runs < minRuns || (runs < maxRuns && performance.now() - start < minMs)) {
        opts.signal?.throwIfAborted();
        await r.run(items);
        runs++;
      }
      return runs;
    }),
  );
  const ms = performance.now() - start;
  const runs = counts.reduce((a, b) => a + b, 0);
  return { itemsPerSec: (runs * batchSize * 1000) / Math.max(ms, 1e-3), batchSize, runs, ms };
}
