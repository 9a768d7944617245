/**
 * Text-line crops as inputs of the direction classifier and the recognizer, as PaddleOCR's
 * `resize_norm_img` makes them: height 48, width from the crop's aspect ratio (rounded up) up to
 * the target width, normalized to [-1, 1] in BGR order, and padded with zeros on the right.
 */
import { normalizeBgr, resize, type Rgba } from '../image.ts';

export const LINE_HEIGHT = 48;
/** The classifier's input width (`cls_image_shape` 3,48,192). */
export const CLS_WIDTH = 192;
/** The recognizer's least input width (`rec_image_shape` 3,48,320). */
export const REC_MIN_WIDTH = 320;
/**
 * The recognizer's greatest input width. PaddleOCR sets none; a bound keeps one item's tensor
 * under 2 MB, and a line longer than 66 times its height is squeezed to fit.
 */
export const REC_MAX_WIDTH = 3200;

const HALF = [0.5, 0.5, 0.5] as const;

/** A line's tensor: float32 [1,3,48,W]. */
export interface LineInput {
  data: Float32Array;
  dims: [1, 3, number, number];
}

/** Resizes a crop to height 48 and at most `width`, normalizes it, pads it to `width`. */
export function resizeNormLine(crop: Rgba, width: number): LineInput {
  const ratio = crop.width / crop.height;
  const w = Math.min(width, Math.ceil(LINE_HEIGHT * ratio));
  const img = resize(crop, Math.max(1, w), LINE_HEIGHT);
  return { data: normalizeBgr(img, HALF, HALF, width), dims: [1, 3, LINE_HEIGHT, width] };
}

/** The classifier's input for a crop (48x192). */
export function clsInput(crop: Rgba): LineInput {
  return resizeNormLine(crop, CLS_WIDTH);
}

/**
 * The recognizer's width for a crop: PaddleOCR's `int(48 * max_wh_ratio)` with a batch of one line,
 * where max_wh_ratio is the larger of 320/48 and the crop's ratio. One line per item keeps each
 * line's result independent of which lines share its batch.
 */
export function recWidth(crop: Rgba): number {
  const ratio = Math.max(REC_MIN_WIDTH / LINE_HEIGHT, crop.width / crop.height);
  return Math.min(REC_MAX_WIDTH, Math.trunc(LINE_HEIGHT * ratio));
}

/** The recognizer's input for a crop (48 x recWidth). */
export function recInput(crop: Rgba): LineInput {
  return resizeNormLine(crop, recWidth(crop));
}
