/**
 * NumPy `.npy` files ↔ WireTensor: how item inputs arrive from a folder and how results leave in
 * an archive. Reads format versions 1.0, 2.0 and 3.0 (3.0 only differs by a UTF-8 header), writes
 * 1.0 (2.0 when the header would not fit), C order only, little-endian only.
 * See https://numpy.org/doc/stable/reference/generated/numpy.lib.format.html
 */
import { LIMITS } from '../../protocol/limits.ts';
import { byteLengthOf, DTYPE_BYTES, type DType, type WireTensor } from '../../protocol/tensor.ts';

/** Largest header accepted: numpy's own reader refuses more than 10 000 bytes by default. */
export const NPY_MAX_HEADER_BYTES = 64 * 1024;

/** Error thrown for bytes that are not an .npy file this reader supports. */
export class NpyError extends Error {
  override name = 'NpyError';
}

const MAGIC = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]; // \x93NUMPY

/** numpy type codes (kind + size) → our dtype. */
const DESCR_TO_DTYPE: Record<string, DType> = {
  f4: 'float32',
  f2: 'float16',
  f8: 'float64',
  i4: 'int32',
  i8: 'int64',
  u1: 'uint8',
  i1: 'int8',
  b1: 'bool',
};

/** Our dtype → the descr numpy itself writes for it. */
const DTYPE_TO_DESCR: Record<DType, string> = {
  float32: '<f4',
  float16: '<f2',
  float64: '<f8',
  int32: '<i4',
  int64: '<i8',
  uint8: '|u1',
  int8: '|i1',
  bool: '|b1',
};

/**
 * Parses an .npy file into a tensor named `name`. The tensor's data views `bytes` (no copy).
 * @throws NpyError naming what is wrong (bad magic, big-endian, fortran order, size mismatch...).
 */
export function readNpy(bytes: Uint8Array, name: string): WireTensor {
  if (bytes.byteLength < 10 || MAGIC.some((b, i) => bytes[i] !== b))
    throw new NpyError('not an .npy file (bad magic)');
  const major = bytes[6] as number;
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let headerLen: number;
  let start: number;
  if (major === 1) {
    headerLen = view.getUint16(8, true);
    start = 10;
  } else if (major === 2 || major === 3) {
    if (bytes.byteLength < 12) throw new NpyError('truncated .npy header');
    headerLen = view.getUint32(8, true);
    start = 12;
  } else {
    throw new NpyError(`unsupported .npy format version ${major}.${bytes[7]}`);
  }
  if (headerLen > NPY_MAX_HEADER_BYTES)
    throw new NpyError(`.npy header of ${headerLen} bytes exceeds ${NPY_MAX_HEADER_BYTES}`);
  if (start + headerLen > bytes.byteLength) throw new NpyError('truncated .npy header');
  const text = new TextDecoder(major === 3 ? 'utf-8' : 'latin1').decode(
    bytes.subarray(start, start + headerLen),
  );
  const header = parseHeader(text);
  const dataStart = start + headerLen;
  const want = byteLengthOf(header.dtype, header.shape);
  const have = bytes.byteLength - dataStart;
  if (have !== want) {
    throw new NpyError(
      `.npy data is ${have} bytes, but ${header.dtype}[${header.shape.join(',')}] needs ${want}`,
    );
  }
  return { name, dtype: header.dtype, dims: header.shape, data: bytes.subarray(dataStart) };
}

/** The header bytes (magic, version, length, padded dict) of an .npy file for this dtype and shape. */
export function npyHeader(dtype: DType, dims: readonly number[]): Uint8Array {
  const shape = dims.length === 1 ? `(${dims[0]},)` : `(${dims.join(', ')})`;
  const dict = `{'descr': '${DTYPE_TO_DESCR[dtype]}', 'fortran_order': False, 'shape': ${shape}, }`;
  // numpy pads with spaces and ends with \n so the data starts on a 64-byte boundary.
  let prefix = 10;
  let total = Math.ceil((prefix + dict.length + 1) / 64) * 64;
  if (total - prefix > 0xffff) {
    prefix = 12;
    total = Math.ceil((prefix + dict.length + 1) / 64) * 64;
  }
  const out = new Uint8Array(total);
  out.set(MAGIC, 0);
  out[6] = prefix === 10 ? 1 : 2;
  out[7] = 0;
  const view = new DataView(out.buffer);
  if (prefix === 10) view.setUint16(8, total - prefix, true);
  else view.setUint32(8, total - prefix, true);
  const padded = dict.padEnd(total - prefix - 1, ' ') + '\n';
  for (let i = 0; i < padded.length; i++) out[prefix + i] = padded.charCodeAt(i);
  return out;
}

/** Serializes a tensor as a complete .npy file (header + data). */
export function writeNpy(t: Pick<WireTensor, 'dtype' | 'dims' | 'data'>): Uint8Array {
  const header = npyHeader(t.dtype, t.dims);
  const out = new Uint8Array(header.byteLength + t.data.byteLength);
  out.set(header, 0);
  out.set(t.data, header.byteLength);
  return out;
}

/** Size in bytes of the .npy file {@link writeNpy} makes for this tensor (header + data). */
export function npyByteLength(t: Pick<WireTensor, 'dtype' | 'dims' | 'data'>): number {
  return npyHeader(t.dtype, t.dims).byteLength + t.data.byteLength;
}

interface Header {
  dtype: DType;
  shape: number[];
}

/** Parses the header's Python dict literal: exactly the keys descr, fortran_order and shape. */
function parseHeader(text: string): Header {
  const p = new LiteralParser(text.trimEnd());
  const dict = p.parseDict();
  p.end();
  const keys = Object.keys(dict).sort().join(',');
  if (keys !== 'descr,fortran_order,shape')
    throw new NpyError(`.npy header has keys {${keys}}, expected descr, fortran_order, shape`);
  const { descr, fortran_order: fortran, shape } = dict as Record<string, unknown>;
  if (typeof descr !== 'string') throw new NpyError('.npy structured dtypes are not supported');
  if (fortran !== false) {
    throw new NpyError('.npy file is in Fortran order; save it in C order (numpy.ascontiguousarray) first');
  }
  if (!Array.isArray(shape) || !shape.every((d) => typeof d === 'number'))
    throw new NpyError('.npy shape is not a tuple of ints');
  if (shape.length > LIMITS.dimsPerTensor)
    throw new NpyError(`.npy array has ${shape.length} dims, at most ${LIMITS.dimsPerTensor} are supported`);
  return { dtype: descrToDType(descr), shape: shape as number[] };
}

function descrToDType(descr: string): DType {
  const order = descr[0];
  const code = descr.slice(1);
  const dtype = DESCR_TO_DTYPE[code];
  if (!dtype || !'<>|='.includes(order ?? '')) {
    throw new NpyError(
      `.npy dtype '${descr}' is not supported (use one of ${Object.values(DTYPE_TO_DESCR).join(' ')})`,
    );
  }
  // Byte order only matters for multi-byte types; '=' is native, which numpy never writes to a file.
  if (DTYPE_BYTES[dtype] > 1 && order !== '<')
    throw new NpyError(`.npy dtype '${descr}' is not little-endian`);
  return dtype;
}

type Literal = string | number | boolean | null | Literal[] | { [k: string]: Literal };

/** A tiny parser for the Python literals numpy writes in headers (dict, tuple, str, int, bool). */
class LiteralParser {
  private i = 0;
  private depth = 0;
  constructor(private readonly s: string) {}

  end(): void {
    this.ws();
    if (this.i !== this.s.length) this.fail('unexpected text after the header dict');
  }

  parseDict(): Record<string, Literal> {
    this.ws();
    this.expect('{');
    const out: Record<string, Literal> = {};
    for (;;) {
      this.ws();
      if (this.peek() === '}') break;
      const key = this.value();
      if (typeof key !== 'string') this.fail('dict key is not a string');
      this.ws();
      this.expect(':');
      if (Object.hasOwn(out, key as string)) this.fail(`duplicate key '${key as string}'`);
      out[key as string] = this.value();
      this.ws();
      if (this.peek() === ',') this.i++;
      else if (this.peek() !== '}') this.fail("expected ',' or '}'");
    }
    this.i++;
    return out;
  }

  private value(): Literal {
    this.ws();
    const c = this.peek();
    if (c === "'" || c === '"') return this.str(c);
    if (c === '(' || c === '[' || c === '{') {
      // Real headers nest two deep at most; the bound keeps hostile input off the call stack.
      if (++this.depth > 8) this.fail('nested too deeply');
      const v = c === '{' ? this.parseDict() : this.seq(c === '(' ? ')' : ']');
      this.depth--;
      return v;
    }
    const m = /^(True|False|None|\d+L?)/.exec(this.s.slice(this.i, this.i + 32));
    if (!m) this.fail('unexpected token');
    const tok = (m as RegExpExecArray)[1] as string;
    this.i += tok.length;
    if (tok === 'True') return true;
    if (tok === 'False') return false;
    if (tok === 'None') return null;
    const n = Number(tok.replace('L', '')); // Python 2 era files write longs as 3L
    if (!Number.isSafeInteger(n)) this.fail('integer out of range');
    return n;
  }

  private str(q: string): string {
    const end = this.s.indexOf(q, this.i + 1);
    if (end < 0) this.fail('unterminated string');
    const v = this.s.slice(this.i + 1, end);
    if (v.includes('\\')) this.fail('escapes in strings are not supported');
    this.i = end + 1;
    return v;
  }

  private seq(close: string): Literal[] {
    this.i++;
    const out: Literal[] = [];
    for (;;) {
      this.ws();
      if (this.peek() === close) break;
      out.push(this.value());
      this.ws();
      if (this.peek() === ',') this.i++;
      else if (this.peek() !== close) this.fail(`expected ',' or '${close}'`);
    }
    this.i++;
    return out;
  }

  private ws(): void {
    while (this.i < this.s.length && ' \t\n\r'.includes(this.s[this.i] as string)) this.i++;
  }

  private peek(): string | undefined {
    return this.s[this.i];
  }

  private expect(c: string): void {
    if (this.s[this.i] !== c) this.fail(`expected '${c}'`);
    this.i++;
  }

  private fail(why: string): never {
    throw new NpyError(`bad .npy header at offset ${this.i}: ${why}`);
  }
}
