/**
 * WAL checkpoints of the hub's SQLite file in a thread of their own (`wal-checkpointer-thread.ts`),
 * not in whichever commit crosses SQLite's 1,000-page mark: a checkpoint copies pages into the
 * database file and fsyncs, which stalls the event loop (and every worker's messages) while it runs.
 * Commits stay as durable: they reach the WAL before the call returns, and `synchronous=NORMAL`
 * fsyncs at checkpoints, done by that thread. Should it fall behind, a connection checkpoints by
 * itself past `BACKSTOP_PAGES`; should it fail, SQLite's own automatic checkpoints take over again.
 *
 * Stopping is synchronous (the store's `close()` is): the thread sleeps on a shared state word with
 * `Atomics.wait`, and `stop()` wakes it and waits until its connection is closed, so the store's own
 * connection closes last and removes the WAL before `close()` returns.
 */
import type Database from 'better-sqlite3';
import { Worker } from 'node:worker_threads';

/** States of the thread, in `Int32Array(ctl)[0]`. */
export const CheckpointerState = {
  Booting: 0,
  Running: 1,
  Stopping: 2,
  Stopped: 3,
} as const;

/** What the thread is started with. */
export interface CheckpointerData {
  file: string;
  everyMs: number;
  /** A `SharedArrayBuffer` of one `Int32`: the state word. */
  ctl: SharedArrayBuffer;
}

/** What the thread reports: only failures (it then leaves checkpoints to SQLite). */
export type FromCheckpointer = { type: 'error'; message: string };

/** Background checkpoints, this often (ms). */
const CHECKPOINT_EVERY_MS = 200;

/**
 * WAL pages past which a commit checkpoints by itself (SQLite's default: 1000). Every connection
 * that writes to the file is set the same (the trust store's too), or its commits would checkpoint
 * on the event loop whenever the thread is a few hundred pages behind.
 */
export const BACKSTOP_PAGES = 20_000;

/** Longest `stop()` waits for the thread's connection to close (ms). */
const STOP_WAIT_MS = 5000;

const ENTRY = new URL('./wal-checkpointer-thread.ts', import.meta.url);

/**
 * Starts a thread running `entry`. Under tsx (a `.ts` entry) the thread first registers tsx's
 * loader: Node 20 does not carry `--import` hooks into worker threads (as `native/ort-threaded.ts`).
 */
function startThread(entry: URL, workerData: CheckpointerData): Worker {
  if (!entry.pathname.endsWith('.ts')) return new Worker(entry, { workerData });
  const tsx = import.meta.resolve('tsx/esm/api');
  const boot = `import(${JSON.stringify(tsx)}).then((api) => { api.register(); return import(${JSON.stringify(entry.href)}); })`;
  return new Worker(boot, { eval: true, workerData });
}

/** The checkpointing thread of one connection's file. */
export class WalCheckpointer {
  private constructor(private readonly ctl: Int32Array) {}

  /**
   * Moves `db`'s checkpoints to a thread; `undefined` where there is no WAL to checkpoint (an
   * in-memory database) or no thread could start (SQLite's own checkpoints then go on).
   */
  static start(db: Database.Database, file: string): WalCheckpointer | undefined {
    if (file === ':memory:' || file === '' || file.startsWith('file:')) return undefined;
    const ctl = new Int32Array(new SharedArrayBuffer(4));
    let worker: Worker;
    try {
      worker = startThread(ENTRY, {
        file,
        everyMs: CHECKPOINT_EVERY_MS,
        ctl: ctl.buffer as SharedArrayBuffer,
      });
    } catch {
      return undefined;
    }
    const fallBack = () => {
      // The thread is gone or cannot checkpoint: SQLite's own automatic checkpoints again.
      Atomics.store(ctl, 0, CheckpointerState.Stopped);
      Atomics.notify(ctl, 0);
      if (db.open) db.pragma('wal_autocheckpoint = 1000');
    };
    worker.on('error', fallBack);
    worker.on('message', (msg: FromCheckpointer) => {
      switch (msg.type) {
        case 'error':
          fallBack();
          break;
      }
    });
    worker.unref();
    db.pragma(`wal_autocheckpoint = ${BACKSTOP_PAGES}`);
    return new WalCheckpointer(ctl);
  }

  /** Stops the thread and waits (at most `STOP_WAIT_MS`) until its connection is closed. Idempotent. */
  stop(): void {
    const { ctl } = this;
    const { Booting, Running, Stopping, Stopped } = CheckpointerState;
    // Still booting: it will see STOPPING and never open the file.
    if (Atomics.compareExchange(ctl, 0, Booting, Stopping) === Booting) return;
    if (Atomics.compareExchange(ctl, 0, Running, Stopping) !== Running) return;
    Atomics.notify(ctl, 0);
    const end = Date.now() + STOP_WAIT_MS;
    while (Atomics.load(ctl, 0) !== Stopped && Date.now() < end) Atomics.wait(ctl, 0, Stopping, 50);
  }
}
