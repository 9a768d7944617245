/**
 * Pixel helpers shared by every OCR step: an RGBA image type, bilinear resizing that samples pixel
 * centers as OpenCV's INTER_LINEAR does (PaddleOCR resizes with `cv2.resize`), a 180° turn, and the
 * perspective crop of a text box. Pure JavaScript over typed arrays: the same code runs in browser
 * workers, native nodes and the hub.
 */

/** A decoded image: 8-bit RGBA, row-major (what pngjs and jpeg-js give). */
export interface Rgba {
  width: number;
  height: number;
  data: Uint8Array;
}

/** A point in pixels. */
export type Point = [number, number];

/** A text box: four corners, clockwise from the top left. */
export type Quad = [Point, Point, Point, Point];

/** Per output coordinate: the two source indices and the weight of the second (pixel centers). */
function axis(srcLen: number, dstLen: number): { i0: Int32Array; i1: Int32Array; f: Float32Array } {
  const i0 = new Int32Array(dstLen);
  const i1 = new Int32Array(dstLen);
  const f = new Float32Array(dstLen);
  const scale = srcLen / dstLen;
  for (let i = 0; i < dstLen; i++) {
    const s = Math.min(Math.max((i + 0.5) * scale - 0.5, 0), srcLen - 1);
    const lo = Math.floor(s);
    i0[i] = lo;
    i1[i] = Math.min(lo + 1, srcLen - 1);
    f[i] = s - lo;
  }
  return { i0, i1, f };
}

/**
 * Resizes bilinearly (OpenCV INTER_LINEAR geometry), rounding to 8-bit like `cv2.resize` on uint8.
 * Alpha is set opaque: no step reads it (OpenCV's `imread` drops it).
 */
export function resize(img: Rgba, width: number, height: number): Rgba {
  const out = new Uint8Array(width * height * 4);
  const xs = axis(img.width, width);
  const ys = axis(img.height, height);
  const d = img.data;
  const row = img.width * 4;
  const x0s = xs.i0.map((v) => v * 4);
  const x1s = xs.i1.map((v) => v * 4);
  const fxs = xs.f;
  for (let y = 0; y < height; y++) {
    const r0 = ys.i0[y]! * row;
    const r1 = ys.i1[y]! * row;
    const fy = ys.f[y]!;
    const gy = 1 - fy;
    let o = y * width * 4;
    for (let x = 0; x < width; x++, o += 4) {
      const a = r0 + x0s[x]!;
      const b = r0 + x1s[x]!;
      const c = r1 + x0s[x]!;
      const e = r1 + x1s[x]!;
      const fx = fxs[x]!;
      const gx = 1 - fx;
      const w00 = gx * gy;
      const w01 = fx * gy;
      const w10 = gx * fy;
      const w11 = fx * fy;
      out[o] = Math.round(d[a]! * w00 + d[b]! * w01 + d[c]! * w10 + d[e]! * w11);
      out[o + 1] = Math.round(d[a + 1]! * w00 + d[b + 1]! * w01 + d[c + 1]! * w10 + d[e + 1]! * w11);
      out[o + 2] = Math.round(d[a + 2]! * w00 + d[b + 2]! * w01 + d[c + 2]! * w10 + d[e + 2]! * w11);
      out[o + 3] = 255;
    }
  }
  return { width, height, data: out };
}

/** The image turned by 180° (`cv2.rotate(img, cv2.ROTATE_180)`). */
export function rotate180(img: Rgba): Rgba {
  const n = img.width * img.height;
  const out = new Uint8Array(n * 4);
  const src = new Uint32Array(img.data.buffer.slice(img.data.byteOffset, img.data.byteOffset + n * 4));
  const dst = new Uint32Array(out.buffer);
  for (let i = 0; i < n; i++) dst[n - 1 - i] = src[i] as number;
  return { width: img.width, height: img.height, data: out };
}

/** The image turned by 90° counter-clockwise (`np.rot90`), for boxes taller than wide. */
export function rotate90ccw(img: Rgba): Rgba {
  const { width: w, height: h } = img;
  const out = new Uint8Array(w * h * 4);
  // Output is h wide and w tall: out(x', y') = in(w - 1 - y', x').
  for (let y = 0; y < w; y++) {
    for (let x = 0; x < h; x++) {
      const s = (x * w + (w - 1 - y)) * 4;
      const o = (y * h + x) * 4;
      out[o] = img.data[s] as number;
      out[o + 1] = img.data[s + 1] as number;
      out[o + 2] = img.data[s + 2] as number;
      out[o + 3] = img.data[s + 3] as number;
    }
  }
  return { width: h, height: w, data: out };
}

/** Solves the 8-unknown linear system of a homography by Gaussian elimination with pivoting. */
function solve(a: number[][], b: number[]): number[] {
  const n = b.length;
  const m = a.map((row, i) => [...row, b[i] as number]);
  for (let c = 0; c < n; c++) {
    let p = c;
    for (let r = c + 1; r < n; r++) if (Math.abs(m[r]![c]!) > Math.abs(m[p]![c]!)) p = r;
    [m[c], m[p]] = [m[p]!, m[c]!];
    const pivot = m[c]![c]!;
    if (Math.abs(pivot) < 1e-12) throw new Error('degenerate box: its corners are collinear');
    for (let r = 0; r < n; r++) {
      if (r === c) continue;
      const k = m[r]![c]! / pivot;
      for (let j = c; j <= n; j++) m[r]![j]! -= k * m[c]![j]!;
    }
  }
  return m.map((row, i) => row[n]! / row[i]!);
}

/** The homography taking `from[i]` to `to[i]` (`cv2.getPerspectiveTransform`), row-major 3x3. */
export function homography(from: Quad, to: Quad): number[] {
  const a: number[][] = [];
  const b: number[] = [];
  for (let i = 0; i < 4; i++) {
    const [x, y] = from[i]!;
    const [u, v] = to[i]!;
    a.push([x, y, 1, 0, 0, 0, -u * x, -u * y]);
    b.push(u);
    a.push([0, 0, 0, x, y, 1, -v * x, -v * y]);
    b.push(v);
  }
  return [...solve(a, b), 1];
}

/**
 * PaddleOCR's `get_rotate_crop_image`: the box warped to an upright rectangle as wide as its longer
 * horizontal edge and as tall as its longer vertical edge, borders replicated; a result at least 1.5
 * times taller than wide is turned 90° (vertical text). PaddleOCR samples bicubically; this samples
 * bilinearly, which differs by a grey level or two at edges.
 */
export function cropQuad(img: Rgba, quad: Quad): Rgba {
  const [p0, p1, p2, p3] = quad;
  const dist = (a: Point, b: Point) => Math.hypot(a[0] - b[0], a[1] - b[1]);
  const w = Math.max(1, Math.trunc(Math.max(dist(p0, p1), dist(p2, p3))));
  const h = Math.max(1, Math.trunc(Math.max(dist(p0, p3), dist(p1, p2))));
  // The inverse map: output pixel → source point.
  const H = homography(
    [
      [0, 0],
      [w, 0],
      [w, h],
      [0, h],
    ],
    quad,
  );
  const out = new Uint8Array(w * h * 4);
  const W = img.width;
  const maxX = img.width - 1;
  const maxY = img.height - 1;
  const d = img.data;
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const z = H[6]! * x + H[7]! * y + H[8]!;
      const sx = Math.min(Math.max((H[0]! * x + H[1]! * y + H[2]!) / z, 0), maxX);
      const sy = Math.min(Math.max((H[3]! * x + H[4]! * y + H[5]!) / z, 0), maxY);
      const x0 = Math.floor(sx);
      const y0 = Math.floor(sy);
      const x1 = Math.min(x0 + 1, maxX);
      const y1 = Math.min(y0 + 1, maxY);
      const fx = sx - x0;
      const fy = sy - y0;
      const o = (y * w + x) * 4;
      for (let c = 0; c < 4; c++) {
        const top = d[(y0 * W + x0) * 4 + c]! * (1 - fx) + d[(y0 * W + x1) * 4 + c]! * fx;
        const bot = d[(y1 * W + x0) * 4 + c]! * (1 - fx) + d[(y1 * W + x1) * 4 + c]! * fx;
        out[o + c] = Math.round(top * (1 - fy) + bot * fy);
      }
    }
  }
  const crop = { width: w, height: h, data: out };
  return h / w >= 1.5 ? rotate90ccw(crop) : crop;
}

/**
 * Normalizes an RGBA image into float32 CHW in BGR channel order (PaddleOCR reads images with
 * OpenCV, so channel 0 is blue): value = (pixel / 255 - mean[c]) / std[c]. With `padWidth`, the
 * image fills the left of a wider tensor whose rest is 0, as PaddleOCR's `resize_norm_img` pads.
 */
export function normalizeBgr(
  img: Rgba,
  mean: readonly [number, number, number],
  std: readonly [number, number, number],
  padWidth = img.width,
): Float32Array {
  const { width: w, height: h, data } = img;
  const W = Math.max(padWidth, w);
  const out = new Float32Array(3 * h * W);
  for (let c = 0; c < 3; c++) {
    const src = 2 - c;
    // value = pixel * k + m: one multiply-add per value.
    const k = 1 / 255 / std[c]!;
    const m = -mean[c]! / std[c]!;
    const plane = c * h * W;
    for (let y = 0; y < h; y++) {
      let i = y * w * 4 + src;
      const o = plane + y * W;
      for (let x = 0; x < w; x++, i += 4) out[o + x] = data[i]! * k + m;
    }
  }
  return out;
}
