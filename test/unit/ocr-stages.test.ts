// Pipeline stages: a stage job's model carries its step's outputs and tolerance; the step makes the
// model's inputs from the item's (pixels in, tensors out) and its answer from the outputs; the
// hub's reference run (pre-flight, canaries) runs the step as workers do; a line cut from its page
// region crops as from the page.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { ModelRegistry } from '../../models/registry.ts';
import { packTensors, unpackTensors } from '../../protocol/pack.ts';
import { bytesOf } from '../../protocol/tensor.ts';
import { decodeImage } from '../../server/io/images.ts';
import { ReferenceRunner } from '../../server/preflight.ts';
import { outputProblem } from '../../server/check.ts';
import { outputsDiffer } from '../../server/verify.ts';
import { parseStep, prepareInputs, runStep, stageModel } from '../../pipeline/stages.ts';
import { lineTensors, pageTensor, readLine } from '../../pipeline/ocr-items.ts';
import { clsInputFor, lineCrop, lineRegion, recInputFor } from '../../pipeline/ocr.ts';
import { cropQuad, type Quad } from '../../pipeline/image.ts';
import { detPreprocess } from '../../pipeline/steps/det-preprocess.ts';
import { dbBoxes } from '../../pipeline/steps/db-postprocess.ts';
import { tempDir } from '../helpers/grid.ts';

const PAGE = decodeImage(readFileSync(new URL('../../models/samples/ocr/page-000.png', import.meta.url)));

test('step references are checked: unknown names and versions are refused', () => {
  assert.deepEqual(parseStep({ name: 'det-page', version: 1 }), { name: 'det-page', version: 1 });
  assert.equal(parseStep(undefined), undefined);
  assert.throws(() => parseStep({ name: 'rm -rf', version: 1 }), /unknown step/);
  assert.throws(() => parseStep({ name: 'rec-line', version: 9 }), /version 9/);
});

test('detection step: the page’s pixels become the detector’s input, as PaddleOCR prepares it', () => {
  const [x] = prepareInputs({ step: { name: 'det-page', version: 1 } }, [pageTensor(PAGE)]);
  const want = detPreprocess(PAGE);
  assert.deepEqual(x!.dims, want.dims);
  assert.deepEqual(x!.data, bytesOf(want.data));
  assert.throws(
    () =>
      prepareInputs({ step: { name: 'det-page', version: 1 } }, [{ ...pageTensor(PAGE), dims: [1, 2, 4] }]),
    /step det-page: page dims/,
  );
});

test('line region: a box cropped from its region of the page is its crop from the page', () => {
  const quads: Quad[] = [
    [
      [10, 12],
      [200, 15],
      [199, 48],
      [9, 45],
    ],
    [
      [0, 0],
      [PAGE.width - 1, 0],
      [PAGE.width - 1, 30],
      [0, 30],
    ],
  ];
  for (const quad of quads) {
    const line = lineRegion(PAGE, quad);
    assert.ok(line.region.width * line.region.height < PAGE.width * PAGE.height);
    const fromPage = cropQuad(PAGE, quad);
    const fromRegion = lineCrop(line);
    assert.deepEqual([fromRegion.width, fromRegion.height], [fromPage.width, fromPage.height]);
    let off = 0;
    for (let i = 0; i < fromPage.data.length; i++)
      off = Math.max(off, Math.abs(fromPage.data[i]! - fromRegion.data[i]!));
    assert.ok(off <= 1, `at most one grey level apart (rounding in the homography): ${off}`);
    // The line's tensors travel and come back whole.
    const back = readLine(unpackTensors(packTensors(lineTensors(line, true))));
    assert.deepEqual(back.quad, line.quad);
    assert.equal(back.turn, true);
    assert.deepEqual(back.region.data, line.region.data);
  }
});

test('line steps: the classifier gets the crop at 48x192, the recognizer the crop turned when told', () => {
  const line = lineRegion(PAGE, [
    [10, 12],
    [200, 15],
    [199, 48],
    [9, 45],
  ]);
  const [cls] = prepareInputs({ step: { name: 'cls-line', version: 1 } }, lineTensors(line));
  assert.deepEqual(cls!.data, bytesOf(clsInputFor(line).cls.data));
  for (const turn of [false, true]) {
    const [rec] = prepareInputs({ step: { name: 'rec-line', version: 1 } }, lineTensors(line, turn));
    const want = recInputFor(lineCrop(line), turn);
    assert.deepEqual(rec!.dims, want.dims);
    assert.deepEqual(rec!.data, bytesOf(want.data));
  }
  assert.throws(
    () => prepareInputs({ step: { name: 'cls-line', version: 1 } }, lineTensors(line).slice(0, 1)),
    /step cls-line: expects a "quad"/,
  );
});

test('a detection stage: the hub’s reference answers boxes, the same as the step on the model’s map', async () => {
  const tmp = tempDir();
  const reg = await ModelRegistry.open({
    modelsDir: new URL('../../models', import.meta.url).pathname,
    uploadDir: tmp.dir,
  });
  const det = reg.byName('ppocr-det');
  assert.ok(det);
  const stage = stageModel(det, { name: 'det-page', version: 1 });
  assert.deepEqual(
    stage.outputs.map((o) => o.name),
    ['boxes'],
  );
  assert.deepEqual(stage.inputs, det.inputs, 'workers load and benchmark the model as it is');
  assert.equal(stage.batchable, false);
  const x = detPreprocess(PAGE);
  const input = { name: 'x', dtype: 'float32' as const, dims: [...x.dims], data: bytesOf(x.data) };
  const runner = new ReferenceRunner();
  try {
    const [plain] = await runner.check(det, reg.filePath(det.sha256)!, new Map([[1, packTensors([input])]]));
    const map = unpackTensors(plain!.outputs)[0]!;
    const [staged] = await runner.check(
      stage,
      reg.filePath(det.sha256)!,
      new Map([[1, packTensors([pageTensor(PAGE)])]]),
    );
    const boxes = unpackTensors(staged!.outputs);
    assert.equal(outputProblem(stage, boxes), undefined, 'the step output fits the stage model');
    assert.equal(boxes[0]!.dims[0], 4, 'four lines on page-000');
    const [, , H, W] = map.dims;
    assert.equal(dbBoxes(new Float32Array(map.data.slice().buffer), W!, H!).length, 4);
    assert.equal(
      outputsDiffer(runStep(stage, [map]), boxes, stage.tolerance),
      undefined,
      'same input and version, same answer',
    );
    // A box moved by 2 px is a different answer.
    const moved = new Float32Array(boxes[0]!.data.slice().buffer);
    moved[0] = (moved[0] as number) + 2;
    assert.ok(outputsDiffer([{ ...boxes[0]!, data: bytesOf(moved) }], boxes, stage.tolerance));
  } finally {
    await runner.close();
    tmp.cleanup();
  }
});
