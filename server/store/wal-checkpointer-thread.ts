/**
 * Entry of the WAL checkpointing thread (a `worker_threads` Worker started by `wal-checkpointer.ts`):
 * its own connection to the hub's SQLite file, a PASSIVE checkpoint (it never blocks the hub's
 * writes) every `everyMs`, until the store closes. It sleeps with `Atomics.wait` on the shared state
 * word, so the store's `close()` can stop it and wait for its connection to close, synchronously.
 */
import Database from 'better-sqlite3';
import { parentPort, workerData } from 'node:worker_threads';
import { CheckpointerState, type CheckpointerData, type FromCheckpointer } from './wal-checkpointer.ts';

const port = parentPort;
if (!port) throw new Error('wal-checkpointer-thread.ts must run in a worker thread');
const data = workerData as CheckpointerData;
const ctl = new Int32Array(data.ctl);

function report(msg: FromCheckpointer): void {
  (port as NonNullable<typeof port>).postMessage(msg);
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

// Still booting when the store closed: it saw STOPPING, so never open the file.
if (
  Atomics.compareExchange(ctl, 0, CheckpointerState.Booting, CheckpointerState.Running) ===
  CheckpointerState.Booting
) {
  let db: Database.Database | undefined;
  try {
    // Never creates files: the database exists (the store made it), and the first checkpoint, now,
    // opens its WAL while it is certainly there. A directory removed under an open store stays removed.
    db = new Database(data.file, { fileMustExist: true });
    db.pragma('busy_timeout = 1000');
    db.pragma('wal_checkpoint(PASSIVE)');
    let failed = false;
    while (Atomics.wait(ctl, 0, CheckpointerState.Running, data.everyMs) === 'timed-out') {
      try {
        db.pragma('wal_checkpoint(PASSIVE)');
      } catch (err) {
        // Once: the store falls back to SQLite's own checkpoints, and this thread idles until closed.
        if (!failed) report({ type: 'error', message: errorText(err) });
        failed = true;
      }
    }
  } catch (err) {
    // The store falls back to SQLite's own checkpoints.
    report({ type: 'error', message: errorText(err) });
  } finally {
    db?.close();
    Atomics.store(ctl, 0, CheckpointerState.Stopped);
    Atomics.notify(ctl, 0);
  }
}
