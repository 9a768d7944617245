/**
 * Model bytes kept across reloads in the browser's Cache Storage, keyed by sha256: a reload does
 * not download a model again. `fetchModel` (worker/model-cache.ts) hashes whatever this store
 * returns before using it, and hashes fetched bytes before storing them, so a corrupt or tampered
 * entry is never run: it is fetched again and overwritten. `get` also hashes, and deletes an entry
 * that does not match its name, so a bad entry does not linger when the hub is unreachable.
 *
 * Writes that fail (quota, private browsing) are logged and skipped: the model then only lives in
 * memory for this page.
 *
 * Tabs of one origin share this cache, and each tab is a worker of its own: two of them asked for
 * the same model at once would download it twice, side by side. `exclusive` takes a Web Lock named
 * after the model (`navigator.locks`, one lock manager per origin), so one tab downloads while the
 * others wait, then read its copy from the cache.
 */
import { silentLogger, errorMessage, type WorkerLogger } from '../../worker/backend.ts';
import { sha256Hex, type ModelStore } from '../../worker/model-cache.ts';

const CACHE = 'shardhub-models-v1';
const SHA256 = /^[0-9a-f]{64}$/;

/** A {@link ModelStore} in Cache Storage; see the file comment. */
export class CacheModelStore implements ModelStore {
  private constructor(
    private readonly cache: Cache,
    private readonly maxEntries: number,
    private readonly log: WorkerLogger,
  ) {}

  /**
   * Opens the cache; undefined where Cache Storage is unavailable (insecure context, disabled).
   * Keeps at most `maxEntries` models, dropping the least recently stored.
   */
  static async open(
    opts: { maxEntries?: number; logger?: WorkerLogger } = {},
  ): Promise<CacheModelStore | undefined> {
    if (typeof caches === 'undefined') return undefined;
    try {
      return new CacheModelStore(await caches.open(CACHE), opts.maxEntries ?? 8, opts.logger ?? silentLogger);
    } catch {
      return undefined;
    }
  }

  /** The cache key of a model: a same-origin URL that is never fetched. */
  static keyOf(sha256: string): string {
    return new URL(`/__shardhub/models/${sha256}`, self.location.href).href;
  }

  async get(sha256: string): Promise<Uint8Array | undefined> {
    if (!SHA256.test(sha256)) return undefined;
    const key = CacheModelStore.keyOf(sha256);
    const res = await this.cache.match(key).catch(() => undefined);
    if (!res) return undefined;
    const bytes = new Uint8Array(await res.arrayBuffer());
    if ((await sha256Hex(bytes)) !== sha256) {
      this.log.warn({ sha256 }, 'cached model bytes do not match their hash; dropped');
      await this.cache.delete(key).catch(() => false);
      return undefined;
    }
    return bytes;
  }

  async exclusive<T>(sha256: string, fn: () => Promise<T>, onWait?: () => void): Promise<T> {
    const locks = (globalThis.navigator as Navigator | undefined)?.locks;
    if (!locks) return fn(); // no Web Locks (older browsers): each tab downloads its own copy
    const name = `shardhub-model-${sha256}`;
    // Try without waiting first, to say so when another tab holds it.
    const NOT_FREE = Symbol('held elsewhere');
    const first = await locks.request(name, { ifAvailable: true }, (lock) => (lock ? fn() : NOT_FREE));
    if (first !== NOT_FREE) return first as T;
    this.log.info({ sha256 }, 'another tab is downloading this model; waiting for its copy');
    onWait?.();
    return locks.request(name, () => fn());
  }

  async put(sha256: string, bytes: Uint8Array): Promise<void> {
    if (!SHA256.test(sha256)) throw new Error('model cache keys are lower-case sha256 hex');
    try {
      const body = bytes.slice().buffer;
      await this.cache.put(
        CacheModelStore.keyOf(sha256),
        new Response(body, {
          headers: {
            'content-type': 'application/octet-stream',
            'x-shardhub-stored-at': String(Date.now()),
          },
        }),
      );
      await this.trim();
    } catch (err) {
      this.log.warn({ sha256, error: errorMessage(err) }, 'model not cached');
    }
  }

  /** Drops the oldest entries beyond `maxEntries`. */
  private async trim(): Promise<void> {
    const keys = await this.cache.keys();
    if (keys.length <= this.maxEntries) return;
    const dated = await Promise.all(
      keys.map(async (req) => {
        const res = await this.cache.match(req);
        return { req, at: Number(res?.headers.get('x-shardhub-stored-at') ?? 0) };
      }),
    );
    dated.sort((a, b) => a.at - b.at);
    for (const { req } of dated.slice(0, dated.length - this.maxEntries)) await this.cache.delete(req);
  }
}
