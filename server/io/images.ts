/**
 * Images → model input: decode PNG (pngjs) or JPEG (jpeg-js), resize bilinearly to the manifest's
 * width and height (`pipeline/image.ts`'s `resize`), order channels, scale and normalize, and lay the result out as a float32 NCHW
 * tensor [1,3,H,W]. Alpha is ignored (as OpenCV's `imread` does, which PaddleOCR uses).
 */
import jpeg from 'jpeg-js';
import { PNG } from 'pngjs';
import type { ImagePreprocessing } from '../../protocol/model.ts';
import { bytesOf, type WireTensor } from '../../protocol/tensor.ts';
import { resize } from '../../pipeline/image.ts';

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
 * `pre.channels` order. The resize is the OCR steps' own (`pipeline/image.ts`: pixel centers and
 * 8-bit rounding, as OpenCV's INTER_LINEAR on uint8), so an image job and an OCR stage see the
 * same pixels.
 */
export function preprocessImage(img: RgbaImage, pre: ImagePreprocessing): WireTensor {
  const { width: W, height: H } = pre;
  const d = resize(img, W, H).data;
  const out = new Float32Array(3 * H * W);
  for (let c = 0; c < 3; c++) {
    const s = pre.channels === 'RGB' ? c : 2 - c;
    const mean = pre.mean[c] as number;
    const std = pre.std[c] as number;
    const plane = c * H * W;
    for (let i = 0; i < H * W; i++) out[plane + i] = ((d[i * 4 + s] as number) * pre.scale - mean) / std;
  }
  return { name: pre.input, dtype: 'float32', dims: [1, 3, H, W], data: bytesOf(out) };
}

/** Decodes and preprocesses image bytes into the model's input tensor. */
export function imageToTensor(bytes: Uint8Array, pre: ImagePreprocessing, what = 'image'): WireTensor {
  return preprocessImage(decodeImage(bytes, what), pre);
}
