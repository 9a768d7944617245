/**
 * Loaded models per runner: each runner of a worker holds its own session of a model (sessions are
 * not shared between concurrent runs), loaded from bytes fetched once per worker. A runner keeps
 * its `modelsPerRunner` most recently used models; older ones are disposed unless in use.
 */
import type { ModelInfo } from '../protocol/model.ts';
import type { LoadedModel } from './backend.ts';
import { fetchModel, type ModelStore } from './model-cache.ts';

/** A model download in progress (or the last one, complete). */
export interface DownloadProgress {
  model: string;
  sha256: string;
  loaded: number;
  total: number;
  /** Why it failed, when it did (the next item of the model tries again). */
  error?: string;
  /** Another tab of this browser is downloading it; this one waits for its copy. */
  waiting?: boolean;
}

/** A runner's use of a session: `release()` once the run (or benchmark) is over. */
export interface SessionLease {
  session: Promise<LoadedModel>;
  release(): void;
}

/** Options of {@link ModelSessions}. */
export interface ModelSessionsOptions {
  runners: number;
  /** The hub's base URL, or a function that says which hub the worker is connected to now. */
  hubUrl: string | (() => string);
  store: ModelStore;
  /** Loads bytes into a session (the backend's `load`). */
  load: (model: ModelInfo, bytes: Uint8Array) => Promise<LoadedModel>;
  headers?: Record<string, string>;
  modelsPerRunner?: number;
  /** Aborts downloads (the worker is closing). */
  signal?: AbortSignal;
  onProgress?: (p: DownloadProgress) => void;
}

interface Entry {
  promise: Promise<LoadedModel>;
  lastUsed: number;
  inUse: number;
}

/**
 * A runner's use of a session, released once. A class, not an object with a closure: one is made
 * for every batch a runner runs, and tsx names each closure it makes with `Object.defineProperty`,
 * a cost a worker would pay per batch.
 */
class Lease implements SessionLease {
  private released = false;

  constructor(private readonly entry: Entry) {}

  get session(): Promise<LoadedModel> {
    return this.entry.promise;
  }

  release(): void {
    if (this.released) return;
    this.released = true;
    this.entry.inUse--;
  }
}

/** Model bytes and per-runner sessions; see the file comment. */
export class ModelSessions {
  private readonly perRunner: Map<string, Entry>[];
  private readonly downloads = new Map<string, Promise<Uint8Array>>();
  private readonly max: number;

  constructor(private readonly opts: ModelSessionsOptions) {
    this.max = opts.modelsPerRunner ?? 2;
    if (!Number.isInteger(this.max) || this.max < 1)
      throw new RangeError('modelsPerRunner must be at least 1');
    this.perRunner = Array.from({ length: opts.runners }, () => new Map());
  }

  /** Starts fetching a model's bytes (if not already), so they are ready when a runner needs them. */
  prefetch(model: ModelInfo): void {
    this.bytes(model).catch(() => undefined);
  }

  /** Runner `runner`'s session of `model`, loading it on first use. */
  acquire(runner: number, model: ModelInfo): SessionLease {
    const sessions = this.perRunner[runner];
    if (!sessions) throw new RangeError(`no runner ${runner}`);
    let entry = sessions.get(model.sha256);
    if (!entry) {
      const promise = this.bytes(model).then((bytes) => this.opts.load(model, bytes));
      const created: Entry = { promise, lastUsed: 0, inUse: 0 };
      entry = created;
      sessions.set(model.sha256, created);
      // A failed load is forgotten, so the next item of that model tries again.
      promise.catch(() => {
        if (sessions.get(model.sha256) === created) sessions.delete(model.sha256);
      });
      this.evict(sessions, model.sha256);
    }
    entry.inUse++;
    entry.lastUsed = performance.now();
    return new Lease(entry);
  }

  /** Disposes every session (the worker is closing). */
  async disposeAll(): Promise<void> {
    const all = this.perRunner.flatMap((m) => [...m.values()]);
    for (const m of this.perRunner) m.clear();
    this.downloads.clear();
    await Promise.all(all.map((e) => e.promise.then((s) => s.dispose()).catch(() => undefined)));
  }

  private evict(sessions: Map<string, Entry>, keep: string): void {
    while (sessions.size > this.max) {
      let victim: [string, Entry] | undefined;
      for (const [sha, e] of sessions) {
        if (sha === keep || e.inUse > 0) continue;
        if (!victim || e.lastUsed < victim[1].lastUsed) victim = [sha, e];
      }
      if (!victim) return; // everything is in use: keep one more for now
      sessions.delete(victim[0]);
      victim[1].promise.then((s) => s.dispose()).catch(() => undefined);
    }
  }

  private bytes(model: ModelInfo): Promise<Uint8Array> {
    const existing = this.downloads.get(model.sha256);
    if (existing) return existing;
    const hub = typeof this.opts.hubUrl === 'string' ? this.opts.hubUrl : this.opts.hubUrl();
    const promise = fetchModel(hub, model, this.opts.store, {
      signal: this.opts.signal,
      headers: this.opts.headers,
      onProgress: (loaded, total) =>
        this.opts.onProgress?.({ model: model.name, sha256: model.sha256, loaded, total }),
      onWait: () =>
        this.opts.onProgress?.({
          model: model.name,
          sha256: model.sha256,
          loaded: 0,
          total: model.bytes,
          waiting: true,
        }),
    });
    this.downloads.set(model.sha256, promise);
    promise.catch((err: unknown) => {
      this.downloads.delete(model.sha256);
      // A failed download must not be shown as one still under way.
      this.opts.onProgress?.({
        model: model.name,
        sha256: model.sha256,
        loaded: 0,
        total: model.bytes,
        error: err instanceof Error ? err.message : String(err),
      });
    });
    // Keep the bytes of the most recent models in memory: runners load their sessions from them.
    while (this.downloads.size > this.max)
      this.downloads.delete(this.downloads.keys().next().value as string);
    return promise;
  }
}
