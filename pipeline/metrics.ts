/** How OCR text compares with known text: character error rate and line accuracy. */

/** Levenshtein distance between two strings, by code point. */
export function editDistance(a: string, b: string): number {
  const x = [...a];
  const y = [...b];
  let prev = Array.from({ length: y.length + 1 }, (_, j) => j);
  for (let i = 1; i <= x.length; i++) {
    const cur = [i];
    for (let j = 1; j <= y.length; j++) {
      cur[j] = Math.min(
        (prev[j] as number) + 1,
        (cur[j - 1] as number) + 1,
        (prev[j - 1] as number) + (x[i - 1] === y[j - 1] ? 0 : 1),
      );
    }
    prev = cur;
  }
  return prev[y.length] as number;
}

/** Totals over pages: errors over truth characters, lines read exactly over truth lines. */
export interface OcrScore {
  pages: number;
  chars: number;
  errors: number;
  /** Character error rate: edit distance of each page's text (lines joined by newlines) over its length. */
  cer: number;
  /** The same with spaces removed from both sides: PP-OCRv4's Chinese+English model often omits spaces between English words. */
  cerNoSpace: number;
  lines: number;
  linesExact: number;
  lineAccuracy: number;
}

/** Scores pages of recognized lines against their known lines (both in reading order). */
export function scoreOcr(pages: readonly { truth: readonly string[]; got: readonly string[] }[]): OcrScore {
  let chars = 0;
  let errors = 0;
  let lines = 0;
  let linesExact = 0;
  let charsNs = 0;
  let errorsNs = 0;
  for (const p of pages) {
    const truth = p.truth.join('\n');
    chars += [...truth].length;
    errors += editDistance(p.got.join('\n'), truth);
    const ns = (s: string) => s.replace(/ /g, '');
    charsNs += [...ns(truth)].length;
    errorsNs += editDistance(ns(p.got.join('\n')), ns(truth));
    lines += p.truth.length;
    const left = [...p.got];
    for (const t of p.truth) {
      const i = left.indexOf(t);
      if (i >= 0) {
        linesExact++;
        left.splice(i, 1);
      }
    }
  }
  return {
    pages: pages.length,
    chars,
    errors,
    cer: chars ? errors / chars : 0,
    cerNoSpace: charsNs ? errorsNs / charsNs : 0,
    lines,
    linesExact,
    lineAccuracy: lines ? linesExact / lines : 1,
  };
}
