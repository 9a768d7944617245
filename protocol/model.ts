/** What every side knows about a model: its manifest (from `models/`) plus its content address. */
import type { DType, Tolerance } from './tensor.ts';

/** A declared input or output. A string dim is dynamic (e.g. "N", "H"). */
export interface TensorSpec {
  name: string;
  dtype: DType;
  shape: (number | string)[];
}

/** How images become an input tensor (NCHW, resized, scaled then normalized per channel). */
export interface ImagePreprocessing {
  kind: 'image';
  input: string;
  width: number;
  height: number;
  channels: 'RGB' | 'BGR';
  /** value = (pixel * scale - mean[c]) / std[c] */
  scale: number;
  mean: [number, number, number];
  std: [number, number, number];
}

/** One item's input dims for benchmarking, plus the seed of its deterministic values. */
export interface Calibration {
  dims: Record<string, number[]>;
  seed: number;
  /** Fixed values for small inputs that must not be random (e.g. a sample rate). */
  values?: Record<string, number[]>;
}

/** A model manifest, as kept in `models/<name>.json`. */
export interface ModelManifest {
  name: string;
  description: string;
  /** Path relative to `models/`, or `npm:<package>/<path>` for a file shipped in an npm package. */
  file: string;
  license?: string;
  inputs: TensorSpec[];
  outputs: TensorSpec[];
  /** Whether items can be concatenated along dim 0 and run as one batch. */
  batchable: boolean;
  /** Items per run when batchable (1 otherwise). */
  batchSize: number;
  preprocessing?: ImagePreprocessing;
  /** How close two backends' outputs must be to count as the same answer. */
  tolerance: Tolerance;
  /** Whether outputs may legitimately contain NaN or Inf. */
  allowNonFinite?: boolean;
  calibration: Calibration;
}

/** A model as the hub hands it to workers: the manifest without its file path, plus its address. */
export interface ModelInfo extends Omit<ModelManifest, 'file'> {
  sha256: string;
  bytes: number;
  /** Path on the hub to fetch the bytes from, e.g. `/api/models/<sha256>`. */
  url: string;
}
