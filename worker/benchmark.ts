/**
 * A worker's benchmark on a real model: calibration inputs at the model's batch size, run on all of
 * the worker's runners in parallel. One warm-up run per runner (session initialization, allocator
 * growth and JIT are not throughput), then timed runs until at least `minMs` have passed and
 * `minRuns` runs were made per runner, stopping early at `maxRuns` or `maxMs`. Fast models thus
 * get many runs (a 2 ms benchmark is noise), slow ones a few. The reply is items per second of all
 * runners together: that figure is the worker's weight.
 */
import type { BenchmarkReply } from '../protocol/events.ts';
import type { ModelInfo } from '../protocol/model.ts';
import type { LoadedModel } from './backend.ts';
import { calibrationInputs } from './calibration.ts';

/** Limits of one benchmark. */
export interface BenchmarkOptions {
  /** Keep running until this much time has passed (default 300 ms)... */
  minMs?: number;
  /** ...and at least this many runs per runner were made (default 3)... */
  minRuns?: number;
  /** ...unless this many runs per runner were made (default 10000)... */
  maxRuns?: number;
  /** ...or this much time passed (default 3000 ms; checked after minRuns). */
  maxMs?: number;
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
  const minMs = opts.minMs ?? 300;
  const maxRuns = opts.maxRuns ?? 10_000;
  const minRuns = opts.minRuns ?? 3;
  const maxMs = opts.maxMs ?? 3000;
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
      for (;;) {
        const elapsed = performance.now() - start;
        if (runs >= minRuns && (elapsed >= minMs || runs >= maxRuns || elapsed >= maxMs)) break;
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
