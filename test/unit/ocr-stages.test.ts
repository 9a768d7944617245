// Pipeline stages: a stage job's model carries its step's outputs and tolerance, and the hub's
// reference run (pre-flight, canaries) answers with the step's outputs, as workers do.
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
import { parseStep, runStep, stageModel } from '../../pipeline/stages.ts';
import { detPreprocess } from '../../pipeline/steps/det-preprocess.ts';
import { dbBoxes } from '../../pipeline/steps/db-postprocess.ts';
import { tempDir } from '../helpers/grid.ts';

test('step references are checked: unknown names and versions are refused', () => {
  assert.deepEqual(parseStep({ name: 'db-boxes', version: 1 }), { name: 'db-boxes', version: 1 });
  assert.equal(parseStep(undefined), undefined);
  assert.throws(() => parseStep({ name: 'rm -rf', version: 1 }), /unknown step/);
  assert.throws(() => parseStep({ name: 'ctc-path', version: 9 }), /version 9/);
});

test('a detection stage: the hub’s reference answers boxes, the same as the step on the model’s map', async () => {
  const tmp = tempDir();
  const reg = await ModelRegistry.open({
    modelsDir: new URL('../../models', import.meta.url).pathname,
    uploadDir: tmp.dir,
  });
  const det = reg.byName('ppocr-det');
  assert.ok(det);
  const stage = stageModel(det, { name: 'db-boxes', version: 1 });
  assert.deepEqual(
    stage.outputs.map((o) => o.name),
    ['boxes'],
  );
  assert.equal(stage.batchable, false);
  const page = decodeImage(readFileSync(new URL('../../models/samples/ocr/page-000.png', import.meta.url)));
  const x = detPreprocess(page);
  const input = { name: 'x', dtype: 'float32' as const, dims: [...x.dims], data: bytesOf(x.data) };
  const runner = new ReferenceRunner();
  try {
    const [plain] = await runner.check(det, reg.filePath(det.sha256)!, new Map([[1, packTensors([input])]]));
    const map = unpackTensors(plain!.outputs)[0]!;
    const [staged] = await runner.check(
      stage,
      reg.filePath(det.sha256)!,
      new Map([[1, packTensors([input])]]),
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
