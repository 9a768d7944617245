/**
 * Pipeline stages on the grid: a stage is a model plus the step its workers run around it. The step
 * prepares the model's inputs from the item's (a page decoded to pixels becomes the detector's
 * tensor; a line's part of its page becomes its crop, resized for the classifier or the recognizer)
 * and turns the model's outputs into the small, verifiable answer the next stage is built from.
 * So the grid, not the hub, carries the pipeline's pixel work. The hub sees a stage job's model
 * with the step's outputs and tolerance in place of the model's, so schema checks, canaries and
 * quorums judge what the worker actually returns.
 *
 * Steps are pure functions of one item's inputs and model outputs, versioned: the same inputs and
 * version always give the same answer, on any worker. The stages' item tensors are defined once in
 * `ocr-items.ts`.
 */
import type { ModelInfo, TensorSpec } from '../protocol/model.ts';
import { asTypedArray, bytesOf, type Tolerance, type WireTensor } from '../protocol/tensor.ts';
import { clsInputFor, lineCrop, recInputFor } from './ocr.ts';
import { readLine, readPage } from './ocr-items.ts';
import { ctcPath } from './steps/ctc-decode.ts';
import { dbBoxes } from './steps/db-postprocess.ts';
import { detPreprocess } from './steps/det-preprocess.ts';

/** A step as a stage job names it (in `options.step`) and as workers receive it (in the model). */
export interface StepRef {
  name: StepName;
  version: number;
}

/** A model as a stage job hands it to workers: with the step they run around it. */
export type StageModel = ModelInfo & { step?: StepRef };

interface StepDef {
  version: number;
  /** The step's answer in place of the model's outputs (absent: the model's outputs as they are). */
  outputs?: TensorSpec[];
  /** How close two workers' answers must be to count as the same (absent: the model's). */
  tolerance?: Tolerance;
  /** The model's inputs from the item's. */
  prepare(inputs: readonly WireTensor[]): WireTensor[];
  /** The answer from the model's outputs (and the item's inputs). */
  run?(outputs: readonly WireTensor[], inputs: readonly WireTensor[]): WireTensor[];
}

function only(outputs: readonly WireTensor[], step: string): WireTensor {
  const [t] = outputs;
  if (!t || outputs.length !== 1 || t.dtype !== 'float32')
    throw new Error(`${step}: expects one float32 output`);
  return t;
}

function x(data: Float32Array, dims: readonly number[]): WireTensor[] {
  return [{ name: 'x', dtype: 'float32', dims: [...dims], data: bytesOf(data) }];
}

const STEPS = {
  /**
   * Detection. Item: the decoded `page` (`ocr-items.ts`). Before the model: PaddleOCR's detection
   * preprocessing. After: the map [1,1,H,W] → `boxes` [K,9], each box's four corners on the map
   * (x,y clockwise from the top left) and its score. Tolerance 1.5 px: backends whose maps differ
   * within the model's 1e-3 can flip a pixel at the 0.3 threshold, moving a corner by under a pixel.
   */
  'det-page': {
    version: 1,
    outputs: [{ name: 'boxes', dtype: 'float32', shape: ['K', 9] }],
    tolerance: { atol: 1.5, rtol: 0 },
    prepare(inputs) {
      const det = detPreprocess(readPage(inputs));
      return x(det.data, det.dims);
    },
    run(outputs) {
      const t = only(outputs, 'det-page');
      const [, , H, W] = t.dims as [number, number, number, number];
      if (t.dims.length !== 4 || !(H > 0 && W > 0)) throw new Error(`det-page: map dims [${t.dims}]`);
      const boxes = dbBoxes(asTypedArray(t) as Float32Array, W, H);
      const out = new Float32Array(boxes.length * 9);
      boxes.forEach((b, i) => {
        out.set([...b.quad.flat(), b.score], i * 9);
      });
      return [{ name: 'boxes', dtype: 'float32', dims: [boxes.length, 9], data: bytesOf(out) }];
    },
  },
  /**
   * Direction. Item: a line's `region` and `quad`. Before the model: the box's perspective crop,
   * resized to 48x192 and normalized. The answer is the model's [1,2] probabilities.
   */
  'cls-line': {
    version: 1,
    prepare(inputs) {
      const { cls } = clsInputFor(readLine(inputs));
      return x(cls.data, cls.dims);
    },
  },
  /**
   * Recognition. Item: a line's `region`, `quad` and `turn`. Before the model: the crop, turned
   * when the classifier said so, resized to height 48 and normalized. After: the probabilities
   * [1,T,C] → `path` [L,2], the greedy CTC path's classes and their probabilities. Tolerance 0.01:
   * a different class is a different answer; probabilities agree within the model's own tolerance.
   */
  'rec-line': {
    version: 1,
    outputs: [{ name: 'path', dtype: 'float32', shape: ['L', 2] }],
    tolerance: { atol: 0.01, rtol: 0 },
    prepare(inputs) {
      const line = readLine(inputs);
      const rec = recInputFor(lineCrop(line), line.turn);
      return x(rec.data, rec.dims);
    },
    run(outputs) {
      const t = only(outputs, 'rec-line');
      const [N, T, C] = t.dims as [number, number, number];
      if (t.dims.length !== 3 || N !== 1) throw new Error(`rec-line: probabilities dims [${t.dims}]`);
      const p = ctcPath(asTypedArray(t) as Float32Array, T, C);
      const out = new Float32Array(p.ids.length * 2);
      for (let i = 0; i < p.ids.length; i++) out.set([p.ids[i] as number, p.probs[i] as number], i * 2);
      return [{ name: 'path', dtype: 'float32', dims: [p.ids.length, 2], data: bytesOf(out) }];
    },
  },
} satisfies Record<string, StepDef>;

export type StepName = keyof typeof STEPS;

/** Reads a step reference from untrusted JSON (job options); undefined when there is none. */
export function parseStep(value: unknown): StepRef | undefined {
  if (value === undefined || value === null) return undefined;
  const v = value as { name?: unknown; version?: unknown };
  if (typeof v.name !== 'string' || !Object.hasOwn(STEPS, v.name))
    throw new Error(`unknown step ${JSON.stringify(v.name)}`);
  const def = STEPS[v.name as StepName];
  if (v.version !== def.version)
    throw new Error(`step ${v.name} version ${String(v.version)}: this build has ${def.version}`);
  return { name: v.name as StepName, version: def.version };
}

/**
 * The model a stage job's workers run and the hub judges: the model, one item per run (stage items
 * differ in size), with the step's outputs and tolerance where it has its own.
 */
export function stageModel(model: ModelInfo, step: StepRef | undefined): StageModel {
  if (!step) return model;
  const def: StepDef = STEPS[step.name];
  return {
    ...model,
    outputs: def.outputs ?? model.outputs,
    tolerance: def.tolerance ?? model.tolerance,
    batchable: false,
    batchSize: 1,
    step,
  };
}

function defOf(step: StepRef): StepDef {
  const def: StepDef | undefined = Object.hasOwn(STEPS, step.name) ? STEPS[step.name] : undefined;
  if (!def || def.version !== step.version)
    throw new Error(`step ${step.name}@${step.version} is not in this build`);
  return def;
}

/** The model's inputs for one item of a stage (the item's inputs as they are without a step). */
export function prepareInputs(model: Pick<StageModel, 'step'>, inputs: WireTensor[]): WireTensor[] {
  const step = model.step;
  if (!step) return inputs;
  try {
    return defOf(step).prepare(inputs);
  } catch (err) {
    throw new Error(`step ${step.name}: ${(err as Error).message}`, { cause: err });
  }
}

/**
 * Runs a stage model's step on one item's model outputs (the outputs as they are without a step,
 * or for a step that answers with them); `inputs` are the item's own.
 */
export function runStep(
  model: Pick<StageModel, 'step'>,
  outputs: WireTensor[],
  inputs: readonly WireTensor[] = [],
): WireTensor[] {
  const step = model.step;
  if (!step) return outputs;
  const def = defOf(step);
  return def.run ? def.run(outputs, inputs) : outputs;
}
