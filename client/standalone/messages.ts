/**
 * Messages of the standalone benchmark worker: onnxruntime-web alone, no shardhub in the loop.
 */
import type { ModelInfo } from '../../protocol/model.ts';
import type { EngineBackend, EngineInfo } from '../inference/messages.ts';

/** A standalone run: the model, the provider and how long to measure. */
export interface StandaloneRequest {
  model: ModelInfo;
  backend: EngineBackend;
  numThreads: number;
  /** Input dims per input for one item (default: the model's calibration dims). */
  dims?: Record<string, number[]>;
  /** Measure for at least this long (default 3000 ms)... */
  minMs?: number;
  /** ...and at least this many runs (default 5), after one warm-up run. */
  minRuns?: number;
}

/** What a standalone run measured. */
export interface StandaloneResult {
  info: EngineInfo;
  batchSize: number;
  runs: number;
  ms: number;
  itemsPerSec: number;
}

/** Page → worker. */
export type ToStandalone = { type: 'bench'; request: StandaloneRequest; bytes: Uint8Array };

/** Worker → page. */
export type FromStandalone =
  { type: 'result'; result: StandaloneResult } | { type: 'error'; message: string };
