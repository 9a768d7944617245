/**
 * The worker's local queue of assigned, unstarted items: FIFO with O(1) membership, and a batch
 * taken from the head in O(batch) when the head items share the batch's model (the common case: one
 * job at a time). Shards can hold thousands of items; filtering the whole queue for every batch made
 * the run loop quadratic in the shard size.
 */

/** What the queue needs of an entry. */
export interface QueuedItem {
  itemId: number;
  model: { sha256: string };
}

/** A FIFO of queued items; see the file comment. */
export class ItemQueue<T extends QueuedItem> {
  private items: (T | undefined)[] = [];
  private head = 0;
  private readonly ids = new Set<number>();

  /** Items waiting. */
  get length(): number {
    return this.ids.size;
  }

  /** The oldest waiting item. */
  peek(): T | undefined {
    this.skipHoles();
    return this.items[this.head];
  }

  has(itemId: number): boolean {
    return this.ids.has(itemId);
  }

  push(item: T): void {
    this.items.push(item);
    this.ids.add(item.itemId);
  }

  /** Takes up to `max` of the oldest items that run `sha256`, keeping the others in order. */
  take(sha256: string, max: number): T[] {
    this.skipHoles();
    return this.extract((e) => e.model.sha256 === sha256, max);
  }

  /** Removes the items `drop` selects; returns them in queue order. */
  remove(drop: (item: T) => boolean): T[] {
    return this.extract(drop, Number.POSITIVE_INFINITY);
  }

  /** Removes up to `max` of the items `drop` selects, from the head on; returns them in queue order. */
  private extract(drop: (item: T) => boolean, max: number): T[] {
    const out: T[] = [];
    for (let i = this.head; i < this.items.length && out.length < max; i++) {
      const e = this.items[i];
      if (!e || !drop(e)) continue;
      out.push(e);
      this.items[i] = undefined;
      this.ids.delete(e.itemId);
    }
    this.skipHoles();
    this.compact();
    return out;
  }

  /** Empties the queue; returns the item ids it held, in order. */
  clear(): number[] {
    const ids: number[] = [];
    for (let i = this.head; i < this.items.length; i++) {
      const e = this.items[i];
      if (e) ids.push(e.itemId);
    }
    this.items = [];
    this.head = 0;
    this.ids.clear();
    return ids;
  }

  private skipHoles(): void {
    while (this.head < this.items.length && this.items[this.head] === undefined) this.head++;
    if (this.head === this.items.length && this.head > 0) {
      this.items = [];
      this.head = 0;
    }
  }

  /** Drops the consumed prefix once it is most of the array (amortized O(1) per item). */
  private compact(): void {
    if (this.head > 1024 && this.head * 2 > this.items.length) {
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
  }
}
