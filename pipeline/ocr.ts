/**
 * The OCR pipeline's page-level logic, shared by the standalone pipeline (one process) and the
 * grid's coordinator: what each stage's items are, and how their results make a page's lines.
 *
 * detection (DB) → boxes → crop → direction (turn 180° lines) → recognition → CTC text, as
 * PaddleOCR's `TextSystem` does it (`drop_score` 0.5, reading order of `sorted_boxes`).
 */
import { cropQuad, rotate180, type Quad, type Rgba } from './image.ts';
import { clsInput, recInput, type LineInput } from './steps/crop-resize.ts';
import { direction } from './steps/cls-rotate.ts';
import { pathText, DROP_SCORE, type CtcPath } from './steps/ctc-decode.ts';
import { readingOrder, toPageBoxes, type MapBox, type PageBox } from './steps/db-postprocess.ts';

/** Version of the pipeline's steps: results of different versions are never mixed or cached together. */
export const OCR_PIPELINE_VERSION = 2;

/** One recognized line. */
export interface OcrLine {
  text: string;
  confidence: number;
  /** Corners on the page, clockwise from the top left, in pixels. */
  box: Quad;
}

/** A page's outcome: its lines in reading order, or why it has none. */
export interface OcrPage {
  width: number;
  height: number;
  lines: OcrLine[];
  /** The lines' text joined by newlines. */
  text: string;
  /** `ok`, or `no_text` when no line was found (not an error: a blank page). */
  outcome: 'ok' | 'no_text';
}

/**
 * Margin around a box's bounding rectangle in its line region: the crop's bilinear samples reach
 * one pixel past the box's corners, and a second keeps rounding in the homography from reaching
 * outside.
 */
const REGION_MARGIN = 2;

/** A text box's part of its page: the pixels its crop reads, and the box in that part's coordinates. */
export interface LineRegion {
  region: Rgba;
  quad: Quad;
}

/**
 * The rectangle of the page a box's crop reads (its bounding rectangle and a margin, within the
 * page), copied row by row, with the box moved into it. Cropping the box from the region gives the
 * crop of the page, so a line travels to the workers as a few kilobytes rather than with its page.
 * The standalone pipeline crops from the region too, so both read the same pixels.
 */
export function lineRegion(page: Rgba, quad: Quad): LineRegion {
  const xs = quad.map((p) => p[0]);
  const ys = quad.map((p) => p[1]);
  const x0 = Math.max(0, Math.floor(Math.min(...xs)) - REGION_MARGIN);
  const y0 = Math.max(0, Math.floor(Math.min(...ys)) - REGION_MARGIN);
  const x1 = Math.min(page.width, Math.ceil(Math.max(...xs)) + REGION_MARGIN + 1);
  const y1 = Math.min(page.height, Math.ceil(Math.max(...ys)) + REGION_MARGIN + 1);
  const width = Math.max(1, x1 - x0);
  const height = Math.max(1, y1 - y0);
  const data = new Uint8Array(width * height * 4);
  for (let y = 0; y < height; y++) {
    const from = ((y0 + y) * page.width + x0) * 4;
    data.set(page.data.subarray(from, from + width * 4), y * width * 4);
  }
  return {
    region: { width, height, data },
    quad: quad.map(([x, y]) => [x - x0, y - y0]) as Quad,
  };
}

/** Boxes found on the detector's map → the page's boxes, in reading order. */
export function pageLines(
  mapBoxes: readonly MapBox[],
  map: { width: number; height: number },
  page: { width: number; height: number },
): PageBox[] {
  return readingOrder(toPageBoxes(mapBoxes, map, page));
}

/** A line's crop: its box warped upright (PaddleOCR's `get_rotate_crop_image`). */
export function lineCrop(line: LineRegion): Rgba {
  return cropQuad(line.region, line.quad);
}

/** The classifier's input for a line: its crop, 48x192. */
export function clsInputFor(line: LineRegion): { crop: Rgba; cls: LineInput } {
  const crop = lineCrop(line);
  return { crop, cls: clsInput(crop) };
}

/** The recognizer's input for a line's crop, turned when the classifier said it is upside down. */
export function recInputFor(crop: Rgba, turn: boolean): LineInput {
  return recInput(turn ? rotate180(crop) : crop);
}

/** Whether the classifier's [p0, p180] say a line is upside down (PaddleOCR's `cls_thresh`). */
export function turned(probs: ArrayLike<number>): boolean {
  return direction(probs).rotate;
}

/** A page's lines from each box's CTC path, in the boxes' order; low-confidence lines dropped. */
export function assemblePage(
  page: { width: number; height: number },
  boxes: readonly PageBox[],
  paths: readonly CtcPath[],
  chars: readonly string[],
): OcrPage {
  const lines: OcrLine[] = [];
  boxes.forEach((b, i) => {
    const { text, confidence } = pathText(paths[i] as CtcPath, chars);
    if (confidence >= DROP_SCORE && text.length > 0) lines.push({ text, confidence, box: b.quad });
  });
  return {
    width: page.width,
    height: page.height,
    lines,
    text: lines.map((l) => l.text).join('\n'),
    outcome: lines.length ? 'ok' : 'no_text',
  };
}
