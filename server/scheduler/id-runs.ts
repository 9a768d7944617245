/**
 * A job's fresh (never assigned) item ids as runs of consecutive ids, taken from the front.
 *
 * Items get consecutive ids as they are appended (one run per upload request, fewer when requests
 * follow each other), so a million-item job is a few hundred runs: the hub's memory for a job's
 * queue does not grow with its item count, where an array of ids would take 8 MB per million items
 * (and as much again each time it is read from the store).
 */

/** A run of ids: `first` to `last`, both included. */
export interface IdRun {
  first: number;
  last: number;
}

export class IdRuns {
  /**
   * Run `i` is `firsts[i]..lasts[i]`; runs before `head` are used up. Two arrays of numbers rather
   * than an object per run: even ids that never follow on (one run each) cost 16 bytes apiece.
   */
  private firsts: number[] = [];
  private lasts: number[] = [];
  private head = 0;
  private count = 0;

  /** Runs as the store gives them (in order, none empty). */
  static of(runs: readonly IdRun[]): IdRuns {
    const out = new IdRuns();
    for (const r of runs) out.pushRun(r.first, r.last);
    return out;
  }

  /** The runs of a list of ids, in the list's order. */
  static fromIds(ids: readonly number[]): IdRuns {
    const out = new IdRuns();
    for (const id of ids) out.pushRun(id, id);
    return out;
  }

  /** Ids left. */
  get size(): number {
    return this.count;
  }

  /** Appends `first..last` (merged into the last run when it follows on). */
  pushRun(first: number, last: number): void {
    if (last < first) throw new RangeError(`empty run ${first}..${last}`);
    const tail = this.lasts.length - 1;
    if (tail >= this.head && this.lasts[tail] === first - 1) this.lasts[tail] = last;
    else {
      this.firsts.push(first);
      this.lasts.push(last);
    }
    this.count += last - first + 1;
  }

  /** Moves up to `n` ids from the front into `out`. */
  takeInto(n: number, out: number[]): void {
    while (n > 0 && this.head < this.firsts.length) {
      const first = this.firsts[this.head] as number;
      const k = Math.min(n, (this.lasts[this.head] as number) - first + 1);
      for (let i = 0; i < k; i++) out.push(first + i);
      this.count -= k;
      n -= k;
      if (first + k > (this.lasts[this.head] as number)) this.head++;
      else this.firsts[this.head] = first + k;
    }
    if (this.head > 64 && this.head * 2 > this.firsts.length) {
      this.firsts = this.firsts.slice(this.head);
      this.lasts = this.lasts.slice(this.head);
      this.head = 0;
    }
  }

  /** The id at position `index` from the front (0-based), without taking it. */
  at(index: number): number {
    if (!Number.isInteger(index) || index < 0 || index >= this.count) {
      throw new RangeError(`index ${index} of ${this.count}`);
    }
    for (let i = this.head; ; i++) {
      const first = this.firsts[i] as number;
      const len = (this.lasts[i] as number) - first + 1;
      if (index < len) return first + index;
      index -= len;
    }
  }
}
