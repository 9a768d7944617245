import { test } from 'node:test';
import assert from 'node:assert/strict';
import jpeg from 'jpeg-js';
import { PNG } from 'pngjs';
import { decodeImage, ImageError, imageToTensor } from '../../server/io/images.ts';
import { toNumbers } from '../../protocol/tensor.ts';
import type { ImagePreprocessing } from '../../protocol/model.ts';

type Rgba = [number, number, number, number];

function png(width: number, height: number, pixel: (x: number, y: number) => Rgba): Uint8Array {
  const img = new PNG({ width, height });
  for (let y = 0; y < height; y++)
    for (let x = 0; x < width; x++) img.data.set(pixel(x, y), (y * width + x) * 4);
  return new Uint8Array(PNG.sync.write(img));
}

function jpg(width: number, height: number, pixel: (x: number, y: number) => Rgba): Uint8Array {
  const data = new Uint8Array(width * height * 4);
  for (let y = 0; y < height; y++) for (let x = 0; x < width; x++) data.set(pixel(x, y), (y * width + x) * 4);
  return new Uint8Array(jpeg.encode({ width, height, data }, 100).data);
}

const plain = (width: number, height: number, channels: 'RGB' | 'BGR' = 'RGB'): ImagePreprocessing => ({
  kind: 'image',
  input: 'x',
  width,
  height,
  channels,
  scale: 1,
  mean: [0, 0, 0],
  std: [1, 1, 1],
});

/** Value of channel c at (x, y) in an NCHW [1,3,H,W] tensor. */
const at = (v: Float64Array, W: number, H: number, c: number, x: number, y: number) =>
  v[c * H * W + y * W + x] as number;

test('PNG pixels land in NCHW order with the right channel order and normalization', () => {
  const bytes = png(3, 2, (x, y) => [10 * x + 1, 100 + y, 200, 255]);
  const pre: ImagePreprocessing = {
    ...plain(3, 2, 'BGR'),
    scale: 1 / 255,
    mean: [0.485, 0.456, 0.406],
    std: [0.229, 0.224, 0.225],
  };
  const t = imageToTensor(bytes, pre);
  assert.equal(t.name, 'x');
  assert.equal(t.dtype, 'float32');
  assert.deepEqual(t.dims, [1, 3, 2, 3]);
  const v = toNumbers(t);
  // BGR: channel 0 is blue (200), channel 2 is red (10x+1).
  const norm = (p: number, c: number) => (p / 255 - pre.mean[c]!) / pre.std[c]!;
  assert.ok(Math.abs(at(v, 3, 2, 0, 2, 1) - norm(200, 0)) < 1e-5);
  assert.ok(Math.abs(at(v, 3, 2, 1, 2, 1) - norm(101, 1)) < 1e-5);
  assert.ok(Math.abs(at(v, 3, 2, 2, 2, 1) - norm(21, 2)) < 1e-5);
  assert.ok(Math.abs(at(v, 3, 2, 2, 0, 0) - norm(1, 2)) < 1e-5);

  const rgb = toNumbers(imageToTensor(bytes, plain(3, 2, 'RGB')));
  assert.deepEqual([at(rgb, 3, 2, 0, 1, 0), at(rgb, 3, 2, 1, 1, 0), at(rgb, 3, 2, 2, 1, 0)], [11, 100, 200]);
});

test('bilinear resize samples pixel centers (OpenCV INTER_LINEAR)', () => {
  // 2x2 → 4x1: black column, white column; rows differ so the vertical blend shows too.
  const bytes = png(2, 2, (x, y) => (x === 0 ? [0, 0, 0, 255] : [200 + 40 * y, 0, 0, 255]));
  const v = toNumbers(imageToTensor(bytes, plain(4, 1)));
  // x: src = (i+0.5)/2-0.5 → 0 (clamped), 0.25, 0.75, 1; y: src 0.5 → rows averaged (white is 220).
  assert.deepEqual([...v.subarray(0, 4)], [0, 55, 165, 220]);
  // Upscaling a single pixel gives that pixel everywhere; alpha is ignored.
  const one = toNumbers(
    imageToTensor(
      png(1, 1, () => [7, 8, 9, 0]),
      plain(5, 3),
    ),
  );
  assert.equal(one.length, 45);
  assert.ok(one.subarray(0, 15).every((x) => x === 7));
  assert.ok(one.subarray(30).every((x) => x === 9));
});

test('JPEG decodes to the encoded colour (within JPEG error) at the requested size', () => {
  const bytes = jpg(16, 8, () => [200, 100, 50, 255]);
  const img = decodeImage(bytes);
  assert.deepEqual([img.width, img.height], [16, 8]);
  const pre: ImagePreprocessing = {
    ...plain(4, 4, 'BGR'),
    scale: 1 / 255,
    mean: [0.5, 0.5, 0.5],
    std: [0.5, 0.5, 0.5],
  };
  const t = imageToTensor(bytes, pre);
  assert.deepEqual(t.dims, [1, 3, 4, 4]);
  const v = toNumbers(t);
  const expect = [50, 100, 200].map((p) => (p / 255 - 0.5) / 0.5); // BGR
  for (let c = 0; c < 3; c++) {
    for (let i = 0; i < 16; i++)
      assert.ok(Math.abs((v[c * 16 + i] as number) - expect[c]!) < 0.04, `c${c} i${i}: ${v[c * 16 + i]}`);
  }
});

test('undecodable and oversized images fail with a clear error', () => {
  assert.throws(
    () => decodeImage(new TextEncoder().encode('GIF89a....'), 'cat.gif'),
    /cat\.gif: not a PNG or JPEG/,
  );
  const good = png(4, 4, () => [1, 2, 3, 255]);
  assert.throws(
    () => decodeImage(good.subarray(0, 40), 'cut.png'),
    (e: Error) => e instanceof ImageError && /cut\.png: cannot decode PNG/.test(e.message),
  );
  const huge = new Uint8Array(good);
  const view = new DataView(huge.buffer);
  view.setUint32(16, 10_000);
  view.setUint32(20, 10_000); // claims 100 megapixels in IHDR
  assert.throws(() => decodeImage(huge, 'huge.png'), /huge\.png: 10000x10000 is larger than 40 megapixels/);

  const j = jpg(8, 8, () => [1, 2, 3, 255]);
  assert.throws(() => decodeImage(j.subarray(0, 30), 'cut.jpg'), /cut\.jpg: cannot decode JPEG/);
  const bigJ = new Uint8Array(j);
  for (let i = 2; i < bigJ.length - 9; i++) {
    if (bigJ[i] === 0xff && bigJ[i + 1] === 0xc0) {
      new DataView(bigJ.buffer).setUint16(i + 5, 9000); // height
      new DataView(bigJ.buffer).setUint16(i + 7, 9000); // width
      break;
    }
  }
  assert.throws(
    () => decodeImage(bigJ, 'big.jpg'),
    /big\.jpg: cannot decode JPEG \(maxResolutionInMP limit exceeded/,
  );
});
