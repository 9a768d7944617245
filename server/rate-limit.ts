/**
 * Token buckets keyed by address (or socket): `rate` tokens a second, up to `burst`. The map of
 * keys is bounded (oldest dropped first), so a flood from many addresses cannot grow memory.
 */

/** A set of token buckets. */
export class RateLimiter {
  private readonly buckets = new Map<string, { tokens: number; at: number }>();

  constructor(
    readonly rate: number,
    readonly burst: number,
    private readonly maxKeys = 100_000,
    private readonly clock: () => number = () => Date.now(),
  ) {
    if (!(rate > 0)) throw new Error('rate must be greater than 0');
    if (!(burst >= 1)) throw new Error('burst must be at least 1');
  }

  /** Takes one token for `key`; false when its bucket is empty. */
  take(key: string, cost = 1): boolean {
    const now = this.clock();
    let b = this.buckets.get(key);
    if (b) {
      b.tokens = Math.min(this.burst, b.tokens + ((now - b.at) / 1000) * this.rate);
      b.at = now;
      this.buckets.delete(key); // re-insert: keeps the map in least-recently-used order
    } else {
      b = { tokens: this.burst, at: now };
      if (this.buckets.size >= this.maxKeys) {
        const oldest = this.buckets.keys().next().value;
        if (oldest !== undefined) this.buckets.delete(oldest);
      }
    }
    this.buckets.set(key, b);
    if (b.tokens < cost) return false;
    b.tokens -= cost;
    return true;
  }

  /** Forgets a key (a socket that closed). */
  forget(key: string): void {
    this.buckets.delete(key);
  }
}
