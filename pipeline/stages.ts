/**
 * Pipeline stages on the grid: a stage is a model plus a step that runs on the worker beside it,
 * turning the model's outputs into the small, verifiable answer the next stage is built from. The
 * hub sees a stage job's model with the step's outputs and tolerance in place of the model's, so
 * schema checks, canaries and quorums judge what the worker actually returns.
 *
 * Steps are pure functions of one item's model outputs, versioned: the same outputs and version
 * always give the same answer, on any worker.
 */
import type { ModelInfo, TensorSpec } from '../protocol/model.ts';
import { asTypedArray, bytesOf, type Tolerance, type WireTensor } from '../protocol/tensor.ts';
import { ctcPath } from './steps/ctc-decode.ts';
import { dbBoxes } from './steps/db-postprocess.ts';

/** A step as a stage job names it (in `options.step`) and as workers receive it (in the model). */
export interface StepRef {
  name: StepName;
  version: number;
}

/** A model as a stage job hands it to workers: with the step they run after it. */
export type StageModel = ModelInfo & { step?: StepRef };

interface StepDef {
  version: number;
  outputs: TensorSpec[];
  /** How close two workers' answers must be to count as the same (see each step). */
  tolerance: Tolerance;
  run(outputs: readonly WireTensor[]): WireTensor[];
}

function only(outputs: readonly WireTensor[], step: string): WireTensor {
  const [t] = outputs;
  if (!t || outputs.length !== 1 || t.dtype !== 'float32')
    throw new Error(`${step}: expects one float32 output`);
  return t;
}

const STEPS = {
  /**
   * Detection map [1,1,H,W] → `boxes` [K,9]: each box's four corners on the map (x,y clockwise
   * from the top left) and its score. Tolerance 1.5 px: backends whose maps differ within the
   * model's 1e-3 can flip a pixel at the 0.3 threshold, moving a corner by under a pixel.
   */
  'db-boxes': {
    version: 1,
    outputs: [{ name: 'boxes', dtype: 'float32', shape: ['K', 9] }],
    tolerance: { atol: 1.5, rtol: 0 },
    run(outputs) {
      const t = only(outputs, 'db-boxes');
      const [, , H, W] = t.dims as [number, number, number, number];
      if (t.dims.length !== 4 || !(H > 0 && W > 0)) throw new Error(`db-boxes: map dims [${t.dims}]`);
      const boxes = dbBoxes(asTypedArray(t) as Float32Array, W, H);
      const out = new Float32Array(boxes.length * 9);
      boxes.forEach((b, i) => {
        out.set([...b.quad.flat(), b.score], i * 9);
      });
      return [{ name: 'boxes', dtype: 'float32', dims: [boxes.length, 9], data: bytesOf(out) }];
    },
  },
  /**
   * Recognizer probabilities [1,T,C] → `path` [L,2]: the greedy CTC path's classes and their
   * probabilities. Tolerance 0.01: a different class is a different answer; probabilities agree
   * within the model's own tolerance.
   */
  'ctc-path': {
    version: 1,
    outputs: [{ name: 'path', dtype: 'float32', shape: ['L', 2] }],
    tolerance: { atol: 0.01, rtol: 0 },
    run(outputs) {
      const t = only(outputs, 'ctc-path');
      const [N, T, C] = t.dims as [number, number, number];
      if (t.dims.length !== 3 || N !== 1) throw new Error(`ctc-path: probabilities dims [${t.dims}]`);
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
 * differ in size), with the step's outputs and tolerance.
 */
export function stageModel(model: ModelInfo, step: StepRef | undefined): StageModel {
  if (!step) return model;
  const def = STEPS[step.name];
  return { ...model, outputs: def.outputs, tolerance: def.tolerance, batchable: false, batchSize: 1, step };
}

/** Runs a stage model's step on one item's model outputs (the outputs as they are without a step). */
export function runStep(model: Pick<StageModel, 'step'>, outputs: WireTensor[]): WireTensor[] {
  const step = model.step;
  if (!step) return outputs;
  const def = STEPS[step.name];
  if (!def || def.version !== step.version)
    throw new Error(`step ${step.name}@${step.version} is not in this build`);
  return def.run(outputs);
}
