/**
 * The OCR stages' items as tensors: what the hub appends to each stage job and what the workers'
 * steps read back (`pipeline/stages.ts`). One definition for both ends, so the two cannot drift.
 *
 * - detection: `page` uint8 [H,W,4], the decoded page (RGBA, as pngjs and jpeg-js give it);
 * - direction: `region` uint8 [h,w,4] and `quad` float32 [4,2], a text box's part of its page;
 * - recognition: the same two and `turn` float32 [1], 1 when the classifier turned the line.
 */
import type { Quad, Rgba } from './image.ts';
import type { LineRegion } from './ocr.ts';
import { asTypedArray, bytesOf, type WireTensor } from '../protocol/tensor.ts';

/** A page as the detection stage's input. */
export function pageTensor(page: Rgba): WireTensor {
  return { name: 'page', dtype: 'uint8', dims: [page.height, page.width, 4], data: page.data };
}

/** The page a detection item carries. */
export function readPage(inputs: readonly WireTensor[]): Rgba {
  const t = inputs.find((i) => i.name === 'page');
  if (!t || t.dtype !== 'uint8' || t.dims.length !== 3 || t.dims[2] !== 4)
    throw new Error('expects a "page" uint8 [H,W,4] input');
  const [height, width] = t.dims as [number, number];
  if (!(width > 0 && height > 0) || t.data.byteLength !== width * height * 4)
    throw new Error(`page dims [${t.dims}] do not fit its ${t.data.byteLength} bytes`);
  return { width, height, data: t.data };
}

/** A line's tensors for the direction stage, and with `turn` for recognition. */
export function lineTensors(line: LineRegion, turn?: boolean): WireTensor[] {
  const { region, quad } = line;
  const out: WireTensor[] = [
    { name: 'region', dtype: 'uint8', dims: [region.height, region.width, 4], data: region.data },
    { name: 'quad', dtype: 'float32', dims: [4, 2], data: bytesOf(Float32Array.from(quad.flat())) },
  ];
  if (turn !== undefined)
    out.push({ name: 'turn', dtype: 'float32', dims: [1], data: bytesOf(Float32Array.of(turn ? 1 : 0)) });
  return out;
}

/** The line a direction or recognition item carries, and its `turn` (false when absent). */
export function readLine(inputs: readonly WireTensor[]): LineRegion & { turn: boolean } {
  const region = readPage(inputs.filter((i) => i.name === 'region').map((i) => ({ ...i, name: 'page' })));
  const q = inputs.find((i) => i.name === 'quad');
  if (!q || q.dtype !== 'float32' || q.dims.join(',') !== '4,2')
    throw new Error('expects a "quad" float32 [4,2] input');
  const v = asTypedArray(q) as Float32Array;
  if (!v.every((x) => Number.isFinite(x))) throw new Error('the quad has a corner that is not a number');
  const quad = [0, 1, 2, 3].map((c) => [v[2 * c] as number, v[2 * c + 1] as number]) as Quad;
  const t = inputs.find((i) => i.name === 'turn');
  const turn = t ? (asTypedArray(t) as Float32Array)[0] === 1 : false;
  return { region, quad, turn };
}
