/**
 * Keeps a hub's lease: registers, renews every `ttlMs / 3`, reaps lapsed hubs every `reapEveryMs`,
 * and says when the lease is lost — renewal refused (`fenced`), or no renewal got through within the
 * TTL (`lost`: the store may not have fenced the hub yet, but it may at any moment, so the hub must
 * stop dispatching as if it had).
 *
 * `held()` is conservative without trusting any clock but this process's monotonic one: a renewal
 * sent at local time `t` makes the server set `expires_at = now() + ttl` with its `now()` no earlier
 * than `t`, so the lease holds at least until `t + ttl` in real time whatever the clocks say.
 */
import { EventEmitter } from 'node:events';
import { FencedError } from './async-store.ts';
import type { AsyncStore, Lease } from './async-store.ts';

export interface LeaseKeeperOptions {
  url: string;
  ttlMs: number;
  /** How often to reap lapsed hubs (0: never). */
  reapEveryMs?: number;
}

interface LeaseKeeperEvents {
  /** The store refused the lease (lapsed and reaped, or replaced): register again. */
  fenced: [err: FencedError];
  /** No renewal got through within the TTL (the store unreachable): treat as fenced. */
  lost: [];
  /** Hubs this one reaped, with how many chunks each freed. */
  reaped: [hubs: { hubId: string; epoch: number; chunks: number }[]];
  /** A renewal or reap failed for another reason; the keeper keeps trying. */
  failure: [err: Error];
}

export class LeaseKeeper extends EventEmitter<LeaseKeeperEvents> {
  private current: Lease;
  /** Local monotonic time (ms) the last successful renewal was sent. */
  private renewedAt: number;
  private timer: NodeJS.Timeout | undefined;
  private reapTimer: NodeJS.Timeout | undefined;
  private state: 'running' | 'lost' | 'stopped' = 'running';
  private renewing = false;

  private constructor(
    private readonly store: AsyncStore,
    lease: Lease,
    sentAt: number,
    opts: LeaseKeeperOptions,
  ) {
    super();
    this.current = lease;
    this.renewedAt = sentAt;
    this.timer = setInterval(() => void this.renew(), Math.max(1, Math.floor(opts.ttlMs / 3)));
    this.timer.unref();
    if (opts.reapEveryMs && opts.reapEveryMs > 0) {
      this.reapTimer = setInterval(() => void this.reap(), opts.reapEveryMs);
      this.reapTimer.unref();
    }
  }

  /** Registers `hubId` and starts renewing. */
  static async start(store: AsyncStore, hubId: string, opts: LeaseKeeperOptions): Promise<LeaseKeeper> {
    if (!Number.isInteger(opts.ttlMs) || opts.ttlMs < 3) {
      throw new Error(`lease ttlMs must be an integer of at least 3, not ${String(opts.ttlMs)}`);
    }
    const sentAt = performance.now();
    const lease = await store.registerHub(hubId, { url: opts.url, ttlMs: opts.ttlMs });
    return new LeaseKeeper(store, lease, sentAt, opts);
  }

  /** The lease to pass to fenced store calls. */
  get lease(): Lease {
    return this.current;
  }

  /** Whether the lease certainly still holds (see the file comment). */
  held(): boolean {
    return this.state === 'running' && performance.now() < this.renewedAt + this.current.ttlMs;
  }

  private async renew(): Promise<void> {
    if (this.state !== 'running' || this.renewing) return;
    this.renewing = true;
    const sentAt = performance.now();
    try {
      this.current = await this.store.renewLease(this.current);
      if (this.state === 'running') this.renewedAt = sentAt;
    } catch (err) {
      if (this.state !== 'running') return;
      if (err instanceof FencedError) {
        this.halt('lost');
        this.emit('fenced', err);
        return;
      }
      this.emit('failure', err as Error);
      if (!this.held()) {
        this.halt('lost');
        this.emit('lost');
      }
    } finally {
      this.renewing = false;
    }
  }

  private async reap(): Promise<void> {
    if (!this.held()) return;
    try {
      const reaped = await this.store.reapExpired(this.current);
      if (reaped.length > 0) this.emit('reaped', reaped);
    } catch (err) {
      if (!(err instanceof FencedError)) this.emit('failure', err as Error);
    }
  }

  private halt(state: 'lost' | 'stopped'): void {
    this.state = state;
    clearInterval(this.timer);
    clearInterval(this.reapTimer);
  }

  /** Stops renewing (the lease then lapses after its TTL, and another hub reaps it). */
  stop(): void {
    this.halt('stopped');
  }
}
