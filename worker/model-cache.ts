/**
 * Models by content address: a worker fetches a model's bytes from the hub once, verifies their
 * sha256, and keeps them in a {@link ModelStore} (a directory on native nodes, IndexedDB or memory in
 * browsers). Bytes read back from a store are verified again, so a corrupt cache entry is refetched
 * rather than run. Uses only `fetch` and `crypto.subtle` (globals in Node 20 and browsers).
 */
import { LIMITS } from '../protocol/limits.ts';
import type { ModelInfo } from '../protocol/model.ts';

/** Where verified model bytes are kept between runs, keyed by their sha256 (lower-case hex). */
export interface ModelStore {
  get(sha256: string): Promise<Uint8Array | undefined>;
  put(sha256: string, bytes: Uint8Array): Promise<void>;
}

/** A store in memory: for browsers without storage, and for tests. */
export class MemoryModelStore implements ModelStore {
  private readonly entries = new Map<string, Uint8Array>();

  /** How many models are kept. */
  get size(): number {
    return this.entries.size;
  }

  async get(sha256: string): Promise<Uint8Array | undefined> {
    return this.entries.get(sha256);
  }

  async put(sha256: string, bytes: Uint8Array): Promise<void> {
    this.entries.set(sha256, bytes);
  }
}

/** Thrown when bytes do not hash to the model's address; names both hashes. */
export class ModelHashError extends Error {
  override name = 'ModelHashError';
  constructor(
    readonly expected: string,
    readonly actual: string,
    source: string,
  ) {
    super(`model bytes from ${source} hash to sha256 ${actual}, expected ${expected}`);
  }
}

/** Options of {@link fetchModel}. */
export interface FetchModelOptions {
  signal?: AbortSignal;
  /** Called as bytes arrive (and once with the full size on a cache hit). `total` may be 0 if unknown. */
  onProgress?(loaded: number, total: number): void;
  /** Extra request headers (e.g. authorization), never logged. */
  headers?: Record<string, string>;
}

/** Lower-case hex sha256 of some bytes. */
export async function sha256Hex(bytes: Uint8Array): Promise<string> {
  const digest = await crypto.subtle.digest('SHA-256', bytes as Uint8Array<ArrayBuffer>);
  let hex = '';
  for (const b of new Uint8Array(digest)) hex += b.toString(16).padStart(2, '0');
  return hex;
}

/** The absolute URL of a model on the hub: `hubUrl + model.url` (an absolute `model.url` is used as is). */
export function modelUrl(hubUrl: string, model: Pick<ModelInfo, 'url'>): string {
  if (/^https?:\/\//i.test(model.url)) return model.url;
  const base = hubUrl.replace(/\/+$/, '');
  return model.url.startsWith('/') ? base + model.url : `${base}/${model.url}`;
}

/**
 * Returns a model's verified bytes: from the store when it holds a copy that still hashes right,
 * else fetched from the hub, verified and then stored. A hash mismatch throws a {@link ModelHashError}
 * and nothing is stored.
 */
export async function fetchModel(
  hubUrl: string,
  model: Pick<ModelInfo, 'sha256' | 'bytes' | 'url' | 'name'>,
  store: ModelStore,
  opts: FetchModelOptions = {},
): Promise<Uint8Array> {
  const expected = model.sha256.toLowerCase();
  const cached = await store.get(expected);
  if (cached) {
    if ((await sha256Hex(cached)) === expected) {
      opts.onProgress?.(cached.byteLength, cached.byteLength);
      return cached;
    }
    // A corrupt entry is ignored and overwritten by the fetched bytes below.
  }
  const url = modelUrl(hubUrl, model);
  const res = await fetch(url, { signal: opts.signal, headers: opts.headers });
  if (!res.ok) {
    await res.body?.cancel().catch(() => undefined);
    throw new Error(
      `fetching model "${model.name}" from ${url} failed: HTTP ${res.status} ${res.statusText}`,
    );
  }
  const header = Number(res.headers.get('content-length') ?? NaN);
  const total = Number.isFinite(header) && header > 0 ? header : model.bytes;
  const limit = Math.min(LIMITS.modelBytes, Math.max(model.bytes, 0) || LIMITS.modelBytes);
  const bytes = await readBody(res, total, limit, opts.onProgress);
  const actual = await sha256Hex(bytes);
  if (actual !== expected) throw new ModelHashError(expected, actual, url);
  await store.put(expected, bytes);
  return bytes;
}

/** Reads a response body into one buffer, reporting progress and refusing more than `limit` bytes. */
async function readBody(
  res: Response,
  total: number,
  limit: number,
  onProgress: FetchModelOptions['onProgress'],
): Promise<Uint8Array> {
  if (!res.body) {
    const bytes = new Uint8Array(await res.arrayBuffer());
    if (bytes.byteLength > limit) throw new Error(`model body of ${bytes.byteLength} bytes exceeds ${limit}`);
    onProgress?.(bytes.byteLength, total);
    return bytes;
  }
  const chunks: Uint8Array[] = [];
  let loaded = 0;
  const reader = res.body.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    loaded += value.byteLength;
    if (loaded > limit) {
      await reader.cancel().catch(() => undefined);
      throw new Error(`model body exceeds the expected ${limit} bytes`);
    }
    chunks.push(value);
    onProgress?.(loaded, total);
  }
  if (chunks.length === 1) return chunks[0] as Uint8Array;
  const out = new Uint8Array(loaded);
  let off = 0;
  for (const c of chunks) {
    out.set(c, off);
    off += c.byteLength;
  }
  return out;
}
