/**
 * Images → model input: decode PNG (pngjs) or JPEG (jpeg-js), resize bilinearly to the manifest's
 * width and height, order channels, scale and normalize, and lay the result out as a float32 NCHW
 * tensor [1,3,H,W]. Alpha is ignored (as OpenCV's `imread` does, which PaddleOCR uses).
 */
import jpeg from 'jpeg-js';
import { PNG } from 'pngjs';
import type { ImagePreprocessing } from '../../protocol/model.ts';
import { bytesOf, type WireTensor } from '../../protocol/tensor.ts';

/** Largest decoded image accepted, in pixels: bounds memory before a byte is decoded. */
export const MAX_IMAGE_PIXELS = 40_000_000;

/** Error thrown for bytes that are not a decodable PNG or JPEG, or an image too large. */
export class ImageError extends Error {
  override name = 'ImageError';
}

/** A decoded image: 8-bit RGBA, row-major. */
export interface RgbaImage {
  width: number;
  height: number;
  data: Uint8Array;
}

const PNG_MAGIC = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];

/**
 * Decodes PNG or JPEG bytes (detected by their magic, not a file name) to RGBA.
 * @param what names the image in error messages (e.g. its file name).
 */
export function decodeImage(bytes: Uint8Array, what = 'image'): RgbaImage {
  if (PNG_MAGIC.every((b, i) => bytes[i] === b)) return decodePng(bytes, what);
  if (bytes[0] === 0xff && bytes[1] === 0xd8 && bytes[2] === 0xff) return decodeJpeg(bytes, what);
  throw new ImageError(`${what}: not a PNG or JPEG image`);
}

function decodePng(bytes: Uint8Array, what: string): RgbaImage {
  // IHDR is always the first chunk: check the size there, before pngjs allocates for it.
  if (bytes.byteLength < 24) throw new ImageError(`${what}: truncated PNG`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  checkSize(view.getUint32(16), view.getUint32(20), what);
  try {
    const png = PNG.sync.read(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength));
    return { width: png.width, height: png.height, data: bytesOf(png.data) };
  } catch (err) {
    throw new ImageError(`${what}: cannot decode PNG (${(err as Error).message})`);
  }
}

function decodeJpeg(bytes: Uint8Array, what: string): RgbaImage {
  try {
    const img = jpeg.decode(bytes, {
      useTArray: true,
      formatAsRGBA: true,
      maxResolutionInMP: MAX_IMAGE_PIXELS / 1e6,
      maxMemoryUsageInMB: 1024,
    });
    checkSize(img.width, img.height, what);
    return { width: img.width, height: img.height, data: img.data };
  } catch (err) {
    if (err instanceof ImageError) throw err;
    throw new ImageError(`${what}: cannot decode JPEG (${(err as Error).message})`);
  }
}

function checkSize(width: number, height: number, what: string): void {
  if (width === 0 || height === 0) throw new ImageError(`${what}: image has no pixels`);
  if (width * height > MAX_IMAGE_PIXELS) {
    throw new ImageError(`${what}: ${width}x${height} is larger than ${MAX_IMAGE_PIXELS / 1e6} megapixels`);
  }
}

/**
 * Resizes an RGBA image bilinearly and normalizes it into a float32 NCHW tensor [1,3,H,W] named
 * `pre.input`: value = (pixel * scale - mean[c]) / std[c], where c counts output channels in
 * `pre.channels` order. Sampling uses pixel centers, like OpenCV's INTER_LINEAR.
 */
export function preprocessImage(img: RgbaImage, pre: ImagePreprocessing): WireTensor {
  const { width: W, height: H } = pre;
  const out = new Float32Array(3 * H * W);
  const src = [0, 1, 2].map((c) => (pre.channels === 'RGB' ? c : 2 - c));
  const xs = axis(img.width, W);
  const ys = axis(img.height, H);
  const d = img.data;
  const row = img.width * 4;
  for (let y = 0; y < H; y++) {
    const y0 = (ys.i0[y] as number) * row;
    const y1 = (ys.i1[y] as number) * row;
    const fy = ys.f[y] as number;
    for (let x = 0; x < W; x++) {
      const x0 = (xs.i0[x] as number) * 4;
      const x1 = (xs.i1[x] as number) * 4;
      const fx = xs.f[x] as number;
      for (let c = 0; c < 3; c++) {
        const s = src[c] as number;
        const top = (d[y0 + x0 + s] as number) * (1 - fx) + (d[y0 + x1 + s] as number) * fx;
        const bottom = (d[y1 + x0 + s] as number) * (1 - fx) + (d[y1 + x1 + s] as number) * fx;
        const v = top * (1 - fy) + bottom * fy;
        out[c * H * W + y * W + x] = (v * pre.scale - (pre.mean[c] as number)) / (pre.std[c] as number);
      }
    }
  }
  return { name: pre.input, dtype: 'float32', dims: [1, 3, H, W], data: bytesOf(out) };
}

/** For each output coordinate: the two source indices and the weight of the second. */
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

/** Decodes and preprocesses image bytes into the model's input tensor. */
export function imageToTensor(bytes: Uint8Array, pre: ImagePreprocessing, what = 'image'): WireTensor {
  return preprocessImage(decodeImage(bytes, what), pre);
}
