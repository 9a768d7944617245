/**
 * PaddleOCR's `CTCLabelDecode`: per time step the most likely class; repeats merged, the blank
 * (class 0) dropped; the text's confidence is the mean probability of the kept steps (0 when none
 * is kept). The character list is the key file's lines after the blank, with a space appended
 * (`use_space_char`).
 */

/** PaddleOCR's `drop_score`: lines recognized with less confidence are left out of the text. */
export const DROP_SCORE = 0.5;

/** One line's decoded classes: indices into the character list, with their probabilities. */
export interface CtcPath {
  ids: Int32Array;
  probs: Float32Array;
}

/** The greedy CTC path of one line's [T, C] probabilities. */
export function ctcPath(probs: Float32Array, steps: number, classes: number): CtcPath {
  const ids: number[] = [];
  const ps: number[] = [];
  let prev = -1;
  for (let t = 0; t < steps; t++) {
    const row = t * classes;
    let best = 0;
    let bestP = probs[row] as number;
    for (let c = 1; c < classes; c++) {
      const p = probs[row + c] as number;
      if (p > bestP) {
        bestP = p;
        best = c;
      }
    }
    if (best !== 0 && best !== prev) {
      ids.push(best);
      ps.push(bestP);
    }
    prev = best;
  }
  return { ids: Int32Array.from(ids), probs: Float32Array.from(ps) };
}

/** PaddleOCR's character list: blank, the key file's lines, then a space. */
export function characterList(keysText: string): string[] {
  const keys = keysText.split('\n').map((l) => l.replace(/\r$/, ''));
  if (keys.at(-1) === '') keys.pop();
  return ['blank', ...keys, ' '];
}

/** A path's text and confidence. */
export function pathText(path: CtcPath, chars: readonly string[]): { text: string; confidence: number } {
  let text = '';
  let sum = 0;
  for (let i = 0; i < path.ids.length; i++) {
    const c = chars[path.ids[i] as number];
    if (c === undefined) throw new Error(`class ${path.ids[i]} is outside the character list`);
    text += c;
    sum += path.probs[i] as number;
  }
  return { text, confidence: path.ids.length ? sum / path.ids.length : 0 };
}
