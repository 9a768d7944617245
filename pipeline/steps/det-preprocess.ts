/**
 * PaddleOCR's detection preprocessing (`DetResizeForTest` with limit_type "max", then
 * `NormalizeImage` and `ToCHWImage`): the longer side is brought down to at most `limitSideLen`,
 * each side rounded to a multiple of 32 (at least 32), and the pixels normalized with ImageNet's
 * mean and std in OpenCV's BGR order.
 */
import { normalizeBgr, resize, type Rgba } from '../image.ts';

/** PaddleOCR's `det_limit_side_len` for PP-OCRv4 inference. */
export const DET_LIMIT_SIDE_LEN = 960;
export const DET_MEAN = [0.485, 0.456, 0.406] as const;
export const DET_STD = [0.229, 0.224, 0.225] as const;

/** Python's `round`: halves go to the even neighbour (PaddleOCR rounds sizes with it). */
export function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** The size the detector sees for a page of this size. */
export function detInputSize(
  width: number,
  height: number,
  limit = DET_LIMIT_SIDE_LEN,
): { width: number; height: number } {
  const ratio = Math.max(width, height) > limit ? limit / Math.max(width, height) : 1;
  const side = (s: number) => Math.max(roundHalfEven(Math.trunc(s * ratio) / 32) * 32, 32);
  return { width: side(width), height: side(height) };
}

/** A page as the detector's input: float32 [1,3,H,W] data and the dims. */
export interface DetInput {
  data: Float32Array;
  dims: [1, 3, number, number];
}

/** Resizes and normalizes a page for the detector. */
export function detPreprocess(page: Rgba, limit = DET_LIMIT_SIDE_LEN): DetInput {
  const size = detInputSize(page.width, page.height, limit);
  const img = resize(page, size.width, size.height);
  return { data: normalizeBgr(img, DET_MEAN, DET_STD), dims: [1, 3, size.height, size.width] };
}
