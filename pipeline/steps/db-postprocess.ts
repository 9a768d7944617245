/**
 * PaddleOCR's DB post-processing (`DBPostProcess`, box_type "quad", score_mode "fast"), split in
 * two: `dbBoxes` works on the probability map alone (threshold 0.3, connected regions, minimum
 * area rectangles, box score ≥ 0.6, unclip by area·1.5/perimeter) and gives boxes in map
 * coordinates; `toPageBoxes` scales them to the page and applies `filter_tag_det_res` (clockwise
 * corners, clipped, both sides over 3 px).
 *
 * Where PaddleOCR takes contours from `cv2.findContours`, regions here are 8-connected components,
 * whose convex hull is that of their outer contour; holes' contours, which OpenCV's RETR_LIST also
 * returns, are not boxes here. The unclip of a rectangle by a rounded offset is the rectangle grown
 * by the distance on every side, which is what pyclipper's offset followed by `minAreaRect` gives.
 */
import type { Point, Quad } from '../image.ts';

export const DB_THRESH = 0.3;
export const DB_BOX_THRESH = 0.6;
export const DB_UNCLIP_RATIO = 1.5;
export const DB_MIN_SIZE = 3;
export const DB_MAX_CANDIDATES = 1000;

/** A box on the probability map with its mean probability. */
export interface MapBox {
  quad: Quad;
  score: number;
}

interface Rect {
  cx: number;
  cy: number;
  w: number;
  h: number;
  /** Unit vector along the `w` side. */
  ux: number;
  uy: number;
}

/** Convex hull (Andrew's monotone chain), counter-clockwise, of points given as flat x,y pairs. */
function hull(points: Point[]): Point[] {
  const pts = points.slice().sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  if (pts.length <= 2) return pts;
  const cross = (o: Point, a: Point, b: Point) =>
    (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0]);
  const lower: Point[] = [];
  for (const p of pts) {
    while (lower.length >= 2 && cross(lower[lower.length - 2]!, lower[lower.length - 1]!, p) <= 0)
      lower.pop();
    lower.push(p);
  }
  const upper: Point[] = [];
  for (let i = pts.length - 1; i >= 0; i--) {
    const p = pts[i]!;
    while (upper.length >= 2 && cross(upper[upper.length - 2]!, upper[upper.length - 1]!, p) <= 0)
      upper.pop();
    upper.push(p);
  }
  return lower.slice(0, -1).concat(upper.slice(0, -1));
}

/** The minimum-area rectangle around a convex polygon (rotating calipers over its edges). */
function minAreaRect(h: Point[]): Rect {
  if (h.length === 1) return { cx: h[0]![0], cy: h[0]![1], w: 0, h: 0, ux: 1, uy: 0 };
  let best: Rect | undefined;
  let bestArea = Infinity;
  for (let i = 0; i < h.length; i++) {
    const a = h[i]!;
    const b = h[(i + 1) % h.length]!;
    const len = Math.hypot(b[0] - a[0], b[1] - a[1]);
    if (len === 0) continue;
    const ux = (b[0] - a[0]) / len;
    const uy = (b[1] - a[1]) / len;
    let minU = Infinity;
    let maxU = -Infinity;
    let minV = Infinity;
    let maxV = -Infinity;
    for (const p of h) {
      const u = p[0] * ux + p[1] * uy;
      const v = -p[0] * uy + p[1] * ux;
      if (u < minU) minU = u;
      if (u > maxU) maxU = u;
      if (v < minV) minV = v;
      if (v > maxV) maxV = v;
    }
    const area = (maxU - minU) * (maxV - minV);
    if (area < bestArea - 1e-9) {
      bestArea = area;
      const cu = (minU + maxU) / 2;
      const cv = (minV + maxV) / 2;
      best = { cx: cu * ux - cv * uy, cy: cu * uy + cv * ux, w: maxU - minU, h: maxV - minV, ux, uy };
    }
  }
  return best ?? { cx: h[0]![0], cy: h[0]![1], w: 0, h: 0, ux: 1, uy: 0 };
}

/**
 * PaddleOCR's `get_mini_boxes` order of a rectangle's corners: of the two leftmost, the upper is
 * first and the lower last; of the two rightmost, the upper is second and the lower third.
 */
function miniBox(r: Rect): Quad {
  const hw = r.w / 2;
  const hh = r.h / 2;
  const vx = -r.uy;
  const vy = r.ux;
  const pts: Point[] = [
    [r.cx - r.ux * hw - vx * hh, r.cy - r.uy * hw - vy * hh],
    [r.cx + r.ux * hw - vx * hh, r.cy + r.uy * hw - vy * hh],
    [r.cx + r.ux * hw + vx * hh, r.cy + r.uy * hw + vy * hh],
    [r.cx - r.ux * hw + vx * hh, r.cy - r.uy * hw + vy * hh],
  ];
  pts.sort((a, b) => a[0] - b[0]);
  const [l1, l2, r1, r2] = pts as [Point, Point, Point, Point];
  const [tl, bl] = l1[1] <= l2[1] ? [l1, l2] : [l2, l1];
  const [tr, br] = r1[1] <= r2[1] ? [r1, r2] : [r2, r1];
  return [tl, tr, br, bl];
}

/** `box_score_fast`: the mean probability inside the box, over its bounding rectangle's pixels. */
function boxScore(pred: Float32Array, W: number, H: number, quad: Quad): number {
  const xs = quad.map((p) => p[0]);
  const ys = quad.map((p) => p[1]);
  const clamp = (v: number, hi: number) => Math.min(Math.max(v, 0), hi);
  const xmin = clamp(Math.floor(Math.min(...xs)), W - 1);
  const xmax = clamp(Math.ceil(Math.max(...xs)), W - 1);
  const ymin = clamp(Math.floor(Math.min(...ys)), H - 1);
  const ymax = clamp(Math.ceil(Math.max(...ys)), H - 1);
  // PaddleOCR shifts the box by (xmin, ymin) and truncates it to integers before filling it.
  const poly = quad.map((p) => [Math.trunc(p[0] - xmin), Math.trunc(p[1] - ymin)] as Point);
  let sum = 0;
  let n = 0;
  for (let y = ymin; y <= ymax; y++) {
    for (let x = xmin; x <= xmax; x++) {
      if (inside(poly, x - xmin, y - ymin)) {
        sum += pred[y * W + x] as number;
        n++;
      }
    }
  }
  return n ? sum / n : 0;
}

/** Whether a pixel lies in or on a convex quadrilateral (as `cv2.fillPoly` fills its edges too). */
function inside(q: Point[], x: number, y: number): boolean {
  let sign = 0;
  for (let i = 0; i < q.length; i++) {
    const a = q[i]!;
    const b = q[(i + 1) % q.length]!;
    const c = (b[0] - a[0]) * (y - a[1]) - (b[1] - a[1]) * (x - a[0]);
    if (c === 0) continue;
    const s = c > 0 ? 1 : -1;
    if (sign === 0) sign = s;
    else if (s !== sign) return false;
  }
  return true;
}

/** Labels 8-connected regions of `bitmap`; gives each region's per-row leftmost and rightmost pixels. */
function regions(bitmap: Uint8Array, W: number, H: number, max: number): Point[][] {
  const label = new Int32Array(W * H);
  const out: Point[][] = [];
  const stack: number[] = [];
  for (let start = 0; start < W * H; start++) {
    if (!bitmap[start] || label[start]) continue;
    const id = out.length + 1;
    label[start] = id;
    stack.push(start);
    const rowMin = new Map<number, number>();
    const rowMax = new Map<number, number>();
    while (stack.length) {
      const p = stack.pop() as number;
      const x = p % W;
      const y = (p - x) / W;
      if (!(rowMin.get(y)! <= x)) rowMin.set(y, x);
      if (!(rowMax.get(y)! >= x)) rowMax.set(y, x);
      for (let dy = -1; dy <= 1; dy++) {
        const yy = y + dy;
        if (yy < 0 || yy >= H) continue;
        for (let dx = -1; dx <= 1; dx++) {
          const xx = x + dx;
          if (xx < 0 || xx >= W) continue;
          const q = yy * W + xx;
          if (bitmap[q] && !label[q]) {
            label[q] = id;
            stack.push(q);
          }
        }
      }
    }
    const pts: Point[] = [];
    for (const [y, x0] of rowMin) {
      pts.push([x0, y]);
      const x1 = rowMax.get(y)!;
      if (x1 !== x0) pts.push([x1, y]);
    }
    out.push(pts);
    if (out.length >= max) break;
  }
  return out;
}

/** Boxes of text on a probability map [H, W] (values in [0, 1]), in map pixels. */
export function dbBoxes(pred: Float32Array, W: number, H: number): MapBox[] {
  const bitmap = new Uint8Array(W * H);
  for (let i = 0; i < W * H; i++) bitmap[i] = (pred[i] as number) > DB_THRESH ? 1 : 0;
  const boxes: MapBox[] = [];
  for (const pts of regions(bitmap, W, H, DB_MAX_CANDIDATES)) {
    const rect = minAreaRect(hull(pts));
    if (Math.min(rect.w, rect.h) < DB_MIN_SIZE) continue;
    const quad = miniBox(rect);
    const score = boxScore(pred, W, H, quad);
    if (score < DB_BOX_THRESH) continue;
    // Unclip: PaddleOCR's distance is area * ratio / perimeter, of the (integer) box.
    const d = (rect.w * rect.h * DB_UNCLIP_RATIO) / (2 * (rect.w + rect.h));
    const grown = { ...rect, w: rect.w + 2 * d, h: rect.h + 2 * d };
    if (Math.min(grown.w, grown.h) < DB_MIN_SIZE + 2) continue;
    boxes.push({ quad: miniBox(grown), score });
  }
  return boxes;
}

/** `order_points_clockwise`: top-left has the least x+y, bottom-right the most, then by y-x. */
export function orderClockwise(q: Quad): Quad {
  const pts = q.slice();
  const sums = pts.map((p) => p[0] + p[1]);
  const tl = sums.indexOf(Math.min(...sums));
  const br = sums.indexOf(Math.max(...sums));
  const rest = pts.filter((_, i) => i !== tl && i !== br);
  if (rest.length !== 2) return q; // a degenerate box: keep it as it came
  const [a, b] = rest as [Point, Point];
  const [tr, bl] = a[1] - a[0] <= b[1] - b[0] ? [a, b] : [b, a];
  return [pts[tl]!, tr, pts[br]!, bl];
}

/** A box on the page. */
export interface PageBox {
  quad: Quad;
  score: number;
}

/**
 * Scales map boxes to a page of `width` x `height` (rounded, as PaddleOCR does) and keeps those
 * whose both sides are over 3 px, corners clockwise from the top left and clipped to the page.
 */
export function toPageBoxes(
  boxes: readonly MapBox[],
  map: { width: number; height: number },
  page: { width: number; height: number },
): PageBox[] {
  const out: PageBox[] = [];
  for (const b of boxes) {
    const scaled = b.quad.map(
      ([x, y]) =>
        [
          Math.min(Math.max(Math.round((x / map.width) * page.width), 0), page.width),
          Math.min(Math.max(Math.round((y / map.height) * page.height), 0), page.height),
        ] as Point,
    ) as Quad;
    const q = orderClockwise(scaled).map(
      ([x, y]) =>
        [Math.min(Math.max(x, 0), page.width - 1), Math.min(Math.max(y, 0), page.height - 1)] as Point,
    ) as Quad;
    const w = Math.trunc(Math.hypot(q[0][0] - q[1][0], q[0][1] - q[1][1]));
    const h = Math.trunc(Math.hypot(q[0][0] - q[3][0], q[0][1] - q[3][1]));
    if (w <= 3 || h <= 3) continue;
    out.push({ quad: q, score: b.score });
  }
  return out;
}

/**
 * PaddleOCR's `sorted_boxes`: reading order, top to bottom by the top-left corner, and left to
 * right among boxes whose tops are within 10 px of each other.
 */
export function readingOrder<T extends { quad: Quad }>(boxes: readonly T[]): T[] {
  const b = boxes.slice().sort((x, y) => x.quad[0][1] - y.quad[0][1] || x.quad[0][0] - y.quad[0][0]);
  for (let i = 0; i < b.length - 1; i++) {
    for (let j = i; j >= 0; j--) {
      const next = b[j + 1]!;
      const cur = b[j]!;
      if (Math.abs(next.quad[0][1] - cur.quad[0][1]) < 10 && next.quad[0][0] < cur.quad[0][0]) {
        b[j] = next;
        b[j + 1] = cur;
      } else break;
    }
  }
  return b;
}
