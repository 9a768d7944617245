/**
 * The OCR pipeline's page-level logic, shared by the standalone pipeline (one process) and the
 * grid's coordinator: what each stage's items are, and how their results make a page's lines.
 *
 * detection (DB) → boxes → crop → direction (turn 180° lines) → recognition → CTC text, as
 * PaddleOCR's `TextSystem` does it (`drop_score` 0.5, reading order of `sorted_boxes`).
 */
import { cropQuad, type Quad, type Rgba } from './image.ts';
import { clsInput, recInput, type LineInput } from './steps/crop-resize.ts';
import { applyDirection, direction, type Direction } from './steps/cls-rotate.ts';
import { pathText, DROP_SCORE, type CtcPath } from './steps/ctc-decode.ts';
import { readingOrder, toPageBoxes, type MapBox, type PageBox } from './steps/db-postprocess.ts';

/** Version of the pipeline's steps: results of different versions are never mixed or cached together. */
export const OCR_PIPELINE_VERSION = 1;

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

/** A text box of a page, cropped and ready for the classifier. */
export interface LineCrop {
  box: PageBox;
  crop: Rgba;
  cls: LineInput;
}

/** Boxes found on the detector's map → the page's line crops, in reading order. */
export function cropLines(
  page: Rgba,
  mapBoxes: readonly MapBox[],
  map: { width: number; height: number },
): LineCrop[] {
  const boxes = readingOrder(toPageBoxes(mapBoxes, map, page));
  return boxes.map((box) => {
    const crop = cropQuad(page, box.quad);
    return { box, crop, cls: clsInput(crop) };
  });
}

/** The recognizer's input for a crop, after the classifier's verdict on its direction. */
export function recInputFor(crop: Rgba, probs: ArrayLike<number>): { dir: Direction; rec: LineInput } {
  const dir = direction(probs);
  return { dir, rec: recInput(applyDirection(crop, dir)) };
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
