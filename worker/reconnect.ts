/**
 * Connecting again after Socket.IO has given up: it does not reconnect after a server-side
 * disconnect or a refusal by the hub's middleware. Backs off exponentially with jitter, as Socket.IO
 * does itself, then connects again. The native node and the browser worker share it.
 */

/** What a reconnector needs of the socket. */
interface Reconnectable {
  readonly connected: boolean;
  readonly active: boolean;
  connect(): unknown;
}

export interface ReconnectOptions {
  socket: Reconnectable;
  log: { info(fields: object, msg: string): void };
  /** First delay (ms); doubles on every attempt up to `maxDelayMs`. */
  delayMs: number;
  maxDelayMs: number;
  /** Each delay moves by up to this fraction either way. */
  jitter: number;
  /** True once the worker is stopping for good: nothing more is scheduled or done. */
  stopping: () => boolean;
  /** Called just before each connect (a worker with several hubs moves to the next one here). */
  onAttempt?: () => void;
}

export class Reconnector {
  private attempt = 0;
  private timer: ReturnType<typeof setTimeout> | undefined;

  constructor(private readonly o: ReconnectOptions) {}

  /** Connects again after the next backoff delay; at most one reconnect is pending at a time. */
  later(): void {
    const { socket, log, delayMs, maxDelayMs, jitter, stopping } = this.o;
    if (stopping() || this.timer !== undefined) return;
    const base = Math.min(maxDelayMs, delayMs * 2 ** this.attempt++);
    const wait = Math.max(0, base + (Math.random() * 2 - 1) * jitter * base);
    log.info({ inMs: Math.round(wait) }, 'reconnecting to hub');
    this.timer = setTimeout(() => {
      this.timer = undefined;
      if (stopping() || socket.connected || socket.active) return;
      this.o.onAttempt?.();
      socket.connect();
    }, wait);
  }

  /** Connected: the next backoff starts from the first delay again. */
  reset(): void {
    this.attempt = 0;
  }

  /** Drops a pending reconnect. */
  cancel(): void {
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
  }
}
