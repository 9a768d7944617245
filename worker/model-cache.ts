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
  /**
   * Optional: runs `fn` while no other user of this store (another tab of the same origin) runs it
   * for the same model, so one of them downloads and the others then read its copy. `onWait` is
   * called if another holds it now.
   */
  exclusive?<T>(sha256: string, fn: () => Promise<T>, onWait?: () => void): Promise<T>;
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
  /** Called when another user of the store (another tab) is fetching the model and this one waits. */
  onWait?(): void;
  /** Extra request headers (e.g. authorization), never logged. */
  headers?: Record<string, string>;
  /**
   * Further tries after a download that failed on the way (network error, cut-off body, HTTP 5xx,
   * 408 or 429); default 4. A wrong hash or a 404 is not tried again.
   */
  retries?: number;
  /** Wait before the first retry (ms), doubled for each next one; default 500. */
  retryDelayMs?: number;
}

/** A download failure worth another try: the network, not the model. */
class PassingError extends Error {
  override name = 'PassingError';
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
  const load = () => cachedOrFetched(hubUrl, model, expected, store, opts);
  if (!store.exclusive) return load();
  return store.exclusive(expected, load, () =>
    opts.onWait ? opts.onWait() : opts.onProgress?.(0, model.bytes),
  );
}

async function cachedOrFetched(
  hubUrl: string,
  model: Pick<ModelInfo, 'sha256' | 'bytes' | 'url' | 'name'>,
  expected: string,
  store: ModelStore,
  opts: FetchModelOptions,
): Promise<Uint8Array> {
  const cached = await store.get(expected);
  if (cached) {
    if ((await sha256Hex(cached)) === expected) {
      opts.onProgress?.(cached.byteLength, cached.byteLength);
      return cached;
    }
    // A corrupt entry is ignored and overwritten by the fetched bytes below.
  }
  const url = modelUrl(hubUrl, model);
  const retries = opts.retries ?? 4;
  let delay = opts.retryDelayMs ?? 500;
  for (let attempt = 0; ; attempt++) {
    try {
      const bytes = await download(url, model, opts);
      const actual = await sha256Hex(bytes);
      if (actual !== expected) throw new ModelHashError(expected, actual, url);
      await store.put(expected, bytes);
      return bytes;
    } catch (err) {
      if (!(err instanceof PassingError) || attempt >= retries || opts.signal?.aborted) {
        throw err instanceof PassingError
          ? new Error(`${err.message} (${attempt + 1} tries)`, { cause: err.cause })
          : err;
      }
      opts.onProgress?.(0, model.bytes);
      await sleep(delay, opts.signal);
      delay *= 2;
    }
  }
}

/** One try at a model's bytes; failures worth another try are {@link PassingError}s. */
async function download(
  url: string,
  model: Pick<ModelInfo, 'bytes' | 'name'>,
  opts: FetchModelOptions,
): Promise<Uint8Array> {
  const what = `fetching model "${model.name}" from ${url} failed`;
  let res: Response;
  try {
    // The store keeps the model: the browser's HTTP cache would only hold a second copy, and two
    // tabs writing one entry at once fail (net::ERR_CACHE_WRITE_FAILURE).
    res = await fetch(url, { signal: opts.signal, headers: opts.headers, cache: 'no-store' });
  } catch (err) {
    if (opts.signal?.aborted) throw err;
    throw new PassingError(`${what}: ${(err as Error).message}`, { cause: err });
  }
  if (!res.ok) {
    await res.body?.cancel().catch(() => undefined);
    const message = `${what}: HTTP ${res.status} ${res.statusText}`;
    if (res.status >= 500 || res.status === 408 || res.status === 429) throw new PassingError(message);
    throw new Error(message);
  }
  const header = Number(res.headers.get('content-length') ?? NaN);
  const total = Number.isFinite(header) && header > 0 ? header : model.bytes;
  const limit = Math.min(LIMITS.modelBytes, Math.max(model.bytes, 0) || LIMITS.modelBytes);
  try {
    return await readBody(res, total, limit, opts.onProgress);
  } catch (err) {
    if (opts.signal?.aborted || (err as Error).message.startsWith('model body')) throw err;
    throw new PassingError(`${what} midway: ${(err as Error).message}`, { cause: err });
  }
}

/** Waits `ms`, or until the signal aborts (then throws its reason). */
function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', abort);
      resolve();
    };
    const abort = () => {
      clearTimeout(timer);
      reject(signal?.reason ?? new Error('aborted'));
    };
    const timer = setTimeout(done, ms);
    signal?.addEventListener('abort', abort, { once: true });
  });
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
