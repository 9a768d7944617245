/**
 * PaddleOCR's text direction decision (`TextClassifier`): the classifier gives probabilities of
 * 0° and 180°; a line is turned when 180° wins with a probability above `cls_thresh` (0.9).
 */
import { rotate180, type Rgba } from '../image.ts';

export const CLS_THRESH = 0.9;

/** The classifier's answer for one line. */
export interface Direction {
  angle: 0 | 180;
  score: number;
  rotate: boolean;
}

/** Reads one line's [p0, p180] probabilities. */
export function direction(probs: ArrayLike<number>, thresh = CLS_THRESH): Direction {
  const p0 = probs[0] as number;
  const p180 = probs[1] as number;
  const angle = p180 > p0 ? 180 : 0;
  const score = angle === 180 ? p180 : p0;
  return { angle, score, rotate: angle === 180 && score > thresh };
}

/** The crop, turned if the classifier says it is upside down. */
export function applyDirection(crop: Rgba, d: Direction): Rgba {
  return d.rotate ? rotate180(crop) : crop;
}
