/**
 * Tensors as they travel and rest: a dtype, dims and the raw little-endian bytes.
 * The same shape is used on the wire (Socket.IO binary attachments), in the store and by both
 * worker kinds, so nothing ever turns a tensor into a JSON number array.
 */

/** Element types a tensor may have; the names are onnxruntime's. */
export const DTYPES = ['float32', 'float16', 'int32', 'int64', 'uint8', 'int8', 'bool', 'float64'] as const;
export type DType = (typeof DTYPES)[number];

/** Bytes per element of each dtype. */
export const DTYPE_BYTES: Record<DType, number> = {
  float32: 4,
  float16: 2,
  int32: 4,
  int64: 8,
  uint8: 1,
  int8: 1,
  bool: 1,
  float64: 8,
};

/** One named tensor. `data` holds exactly `product(dims) * DTYPE_BYTES[dtype]` bytes. */
export interface WireTensor {
  name: string;
  dtype: DType;
  dims: number[];
  data: Uint8Array;
}

/** Number of elements of a tensor with these dims. */
export function elementCount(dims: readonly number[]): number {
  let n = 1;
  for (const d of dims) n *= d;
  return n;
}

/** Bytes of a tensor of this dtype and these dims. */
export function byteLengthOf(dtype: DType, dims: readonly number[]): number {
  return elementCount(dims) * DTYPE_BYTES[dtype];
}

/** Says what is wrong with a tensor's size, or returns undefined when its bytes match its dims. */
export function tensorSizeError(t: WireTensor): string | undefined {
  const want = byteLengthOf(t.dtype, t.dims);
  if (t.data.byteLength !== want) {
    return `tensor "${t.name}" has ${t.data.byteLength} bytes, but ${t.dtype}[${t.dims.join(',')}] needs ${want}`;
  }
  return undefined;
}

type TypedArray =
  Float32Array | Float64Array | Int32Array | BigInt64Array | Uint8Array | Int8Array | Uint16Array;

/** Copies a tensor's bytes into a fresh, aligned typed array of its dtype. */
export function toTypedArray(t: Pick<WireTensor, 'dtype' | 'data'>): TypedArray {
  // A real copy (Buffer#slice would only make a view): guarantees alignment and ownership.
  const bytes = new Uint8Array(t.data);
  return typedView(t.dtype, bytes.buffer, 0, bytes.byteLength);
}

/**
 * A typed array of the tensor's dtype over its bytes: a view when they are aligned for the dtype
 * (no copy), else a copy. The view shares the tensor's memory, so use it only while nothing else
 * writes those bytes (a run's inputs, a check of outputs).
 */
export function asTypedArray(t: Pick<WireTensor, 'dtype' | 'data'>): TypedArray {
  const { buffer, byteOffset, byteLength } = t.data;
  if (byteOffset % DTYPE_BYTES[t.dtype] !== 0 || !(buffer instanceof ArrayBuffer)) return toTypedArray(t);
  return typedView(t.dtype, buffer, byteOffset, byteLength);
}

function typedView(dtype: DType, buf: ArrayBuffer, offset: number, byteLength: number): TypedArray {
  switch (dtype) {
    case 'float32':
      return new Float32Array(buf, offset, byteLength / 4);
    case 'float64':
      return new Float64Array(buf, offset, byteLength / 8);
    case 'float16':
      return new Uint16Array(buf, offset, byteLength / 2);
    case 'int32':
      return new Int32Array(buf, offset, byteLength / 4);
    case 'int64':
      return new BigInt64Array(buf, offset, byteLength / 8);
    case 'uint8':
    case 'bool':
      return new Uint8Array(buf, offset, byteLength);
    case 'int8':
      return new Int8Array(buf, offset, byteLength);
  }
}

/** Views a typed array's bytes (no copy). */
export function bytesOf(a: ArrayBufferView): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

/** Reads any tensor's elements as numbers (int64 converted, float16 decoded): for comparisons. */
export function toNumbers(t: Pick<WireTensor, 'dtype' | 'data'>): Float64Array {
  const a = toTypedArray(t);
  const out = new Float64Array(a.length);
  if (t.dtype === 'float16') {
    for (let i = 0; i < a.length; i++) out[i] = halfToFloat(a[i] as number);
  } else {
    for (let i = 0; i < a.length; i++) out[i] = Number(a[i]);
  }
  return out;
}

function halfToFloat(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const f = h & 0x3ff;
  if (e === 0) return s * 2 ** -14 * (f / 1024);
  if (e === 31) return f ? NaN : s * Infinity;
  return s * 2 ** (e - 15) * (1 + f / 1024);
}

/** Tolerance for comparing outputs across backends: |a-b| <= atol + rtol*|b|. */
export interface Tolerance {
  atol: number;
  rtol: number;
}

/**
 * Compares two tensors element by element within a tolerance.
 * Returns undefined when they agree, else a short reason (first offending index and values).
 */
export function compareTensors(a: WireTensor, b: WireTensor, tol: Tolerance): string | undefined {
  if (a.dtype !== b.dtype) return `dtype ${a.dtype} != ${b.dtype}`;
  if (a.dims.join(',') !== b.dims.join(',')) return `dims [${a.dims}] != [${b.dims}]`;
  const x = toNumbers(a);
  const y = toNumbers(b);
  for (let i = 0; i < x.length; i++) {
    const xi = x[i] as number;
    const yi = y[i] as number;
    if (Number.isNaN(xi) !== Number.isNaN(yi)) return `NaN mismatch at ${i}`;
    if (Math.abs(xi - yi) > tol.atol + tol.rtol * Math.abs(yi)) return `at ${i}: ${xi} vs ${yi}`;
  }
  return undefined;
}
