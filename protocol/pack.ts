/**
 * A compact binary container for a list of named tensors: how item inputs and outputs are kept in
 * the store and sent in REST bodies.
 *
 * Layout: u32le header length, UTF-8 JSON header `[{name, dtype, dims}]`, then each tensor's bytes
 * in header order. Self-describing, so a reader needs no schema; bounded by the caller's limits.
 */
import { byteLengthOf, DTYPES, type DType, type WireTensor } from './tensor.ts';

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** Serializes tensors into one buffer. */
export function packTensors(tensors: readonly WireTensor[]): Uint8Array {
  const header = encoder.encode(JSON.stringify(tensors.map((t) => ({ n: t.name, t: t.dtype, d: t.dims }))));
  let size = 4 + header.byteLength;
  for (const t of tensors) size += t.data.byteLength;
  const out = new Uint8Array(size);
  new DataView(out.buffer).setUint32(0, header.byteLength, true);
  out.set(header, 4);
  let off = 4 + header.byteLength;
  for (const t of tensors) {
    out.set(t.data, off);
    off += t.data.byteLength;
  }
  return out;
}

/** Error thrown when bytes are not a valid tensor pack. */
export class PackError extends Error {
  override name = 'PackError';
}

/** One tensor as a pack's header describes it, checked, with its byte length. */
interface HeaderEntry {
  name: string;
  dtype: DType;
  dims: number[];
  bytes: number;
}

/**
 * The last header {@link unpackTensors} parsed with it, and what it said. The packs of one results
 * message are nearly always of one model, so their headers are the same bytes: given a cache, only
 * the first is decoded and parsed as JSON; the others are compared byte for byte, which is cheaper
 * than parsing JSON once per result on the hub's one thread.
 */
export interface HeaderCache {
  bytes?: Uint8Array;
  entries?: readonly HeaderEntry[];
}

/**
 * Parses a buffer made by {@link packTensors}; the returned tensors view `buf` (no copy). With
 * `cache`, a header the same as the last one parsed with it is not parsed again.
 */
export function unpackTensors(buf: Uint8Array, cache?: HeaderCache): WireTensor[] {
  if (buf.byteLength < 4) throw new PackError('tensor pack too short');
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const hlen = view.getUint32(0, true);
  if (hlen > buf.byteLength - 4 || hlen > 1 << 20)
    throw new PackError('tensor pack header length out of range');
  const headerBytes = buf.subarray(4, 4 + hlen);
  let entries: readonly HeaderEntry[];
  if (cache?.bytes && cache.entries && sameBytes(cache.bytes, headerBytes)) entries = cache.entries;
  else {
    entries = parseHeader(headerBytes);
    if (cache) {
      cache.bytes = headerBytes.slice(); // a copy: the cache must not keep the whole message alive
      cache.entries = entries;
    }
  }
  const out: WireTensor[] = [];
  let off = 4 + hlen;
  for (const e of entries) {
    if (off + e.bytes > buf.byteLength)
      throw new PackError(`tensor "${e.name}" runs past the end of the pack`);
    out.push({ name: e.name, dtype: e.dtype, dims: e.dims.slice(), data: buf.subarray(off, off + e.bytes) });
    off += e.bytes;
  }
  if (off !== buf.byteLength) throw new PackError('trailing bytes after tensor pack');
  return out;
}

/** A pack's JSON header, checked entry by entry. */
function parseHeader(bytes: Uint8Array): HeaderEntry[] {
  let header: unknown;
  try {
    header = JSON.parse(decoder.decode(bytes));
  } catch {
    throw new PackError('tensor pack header is not JSON');
  }
  if (!Array.isArray(header)) throw new PackError('tensor pack header is not a list');
  return (header as { n?: unknown; t?: unknown; d?: unknown }[]).map((h) => {
    if (typeof h?.n !== 'string' || !DTYPES.includes(h.t as DType) || !Array.isArray(h.d)) {
      throw new PackError('tensor pack header entry malformed');
    }
    const dims = h.d as unknown[];
    if (!dims.every((d) => Number.isInteger(d) && (d as number) >= 0)) throw new PackError('bad dims');
    const dtype = h.t as DType;
    return { name: h.n, dtype, dims: dims as number[], bytes: byteLengthOf(dtype, dims as number[]) };
  });
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.byteLength !== b.byteLength) return false;
  for (let i = 0; i < a.byteLength; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** Total bytes of tensor data. */
export function tensorBytes(tensors: readonly WireTensor[]): number {
  let n = 0;
  for (const t of tensors) n += t.data.byteLength;
  return n;
}

/** One item as it travels in a REST body: a name and its input tensors. */
export interface NamedItem {
  name: string;
  tensors: WireTensor[];
}

/**
 * Serializes items for `POST /api/jobs/:id/items`: per item, u32le name length, the UTF-8 name,
 * u32le pack length, then the tensor pack.
 */
export function packItems(items: readonly NamedItem[]): Uint8Array {
  const parts: Uint8Array[] = [];
  let size = 0;
  for (const it of items) {
    const name = encoder.encode(it.name);
    const pack = packTensors(it.tensors);
    const head = new Uint8Array(8 + name.byteLength);
    const dv = new DataView(head.buffer);
    dv.setUint32(0, name.byteLength, true);
    head.set(name, 4);
    dv.setUint32(4 + name.byteLength, pack.byteLength, true);
    parts.push(head, pack);
    size += head.byteLength + pack.byteLength;
  }
  const out = new Uint8Array(size);
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.byteLength;
  }
  return out;
}

/** Parses a body made by {@link packItems}; yields each item's name and its raw tensor pack. */
export function* unpackItems(
  buf: Uint8Array,
  maxNameBytes = 512,
): Generator<{ name: string; pack: Uint8Array }> {
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  let off = 0;
  while (off < buf.byteLength) {
    if (off + 4 > buf.byteLength) throw new PackError('item stream truncated (name length)');
    const nlen = dv.getUint32(off, true);
    if (nlen === 0 || nlen > maxNameBytes) throw new PackError(`item name length ${nlen} out of range`);
    if (off + 4 + nlen + 4 > buf.byteLength) throw new PackError('item stream truncated (name)');
    const name = decoder.decode(buf.subarray(off + 4, off + 4 + nlen));
    const plen = dv.getUint32(off + 4 + nlen, true);
    const start = off + 8 + nlen;
    if (start + plen > buf.byteLength) throw new PackError(`item "${name}" runs past the end of the body`);
    yield { name, pack: buf.subarray(start, start + plen) };
    off = start + plen;
  }
}
