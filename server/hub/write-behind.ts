/**
 * Store writes the hub does not wait for: trust records, replicas, job events, worker counters,
 * a job's `running` mark. They are sent one at a time, in the order they were asked for (a trust
 * record written twice keeps the later one, a replica is dropped after it was added), and a
 * failure is logged, never thrown into the code that asked. What must be stored before the hub
 * answers anyone (results, failures, job states an operator asked for) is awaited where it is
 * written instead.
 */
import type { Logger } from '../logger.ts';

export class WriteBehind {
  private tail: Promise<void> = Promise.resolve();
  private waiting = 0;
  /** The last write queued, while it has not started and takes more rows (`laterRows`). */
  private open: { what: string; rows: unknown[] } | undefined;

  constructor(private readonly log: Logger) {}

  /** Queues `write` after every write queued before it. */
  readonly later = (what: string, write: () => Promise<unknown>): void => {
    this.open = undefined;
    this.enqueue(what, write);
  };

  /**
   * Queues a row for a write of many rows: rows of the same kind asked for one after another, while
   * the writes before them are still in the store, go in one write (`write` gets them in order).
   */
  readonly laterRows = <R>(what: string, row: R, write: (rows: R[]) => Promise<unknown>): void => {
    if (this.open?.what === what) {
      this.open.rows.push(row);
      return;
    }
    const batch = { what, rows: [row] as unknown[] };
    this.enqueue(what, () => {
      if (this.open === batch) this.open = undefined;
      return write(batch.rows as R[]);
    });
    this.open = batch;
  };

  private enqueue(what: string, write: () => Promise<unknown>): void {
    this.waiting++;
    this.tail = this.tail
      .then(write)
      .then(
        () => undefined,
        (err: unknown) => this.log.error({ err, what }, 'a store write failed'),
      )
      .finally(() => this.waiting--);
  }

  /** Writes queued and not finished. */
  get pending(): number {
    return this.waiting;
  }

  /** Resolves once every write queued so far has finished. */
  drained(): Promise<void> {
    return this.tail;
  }
}
