/**
 * The worker's outbox: results and failures on their way to the hub.
 *
 * Results are sent in batches (`items:done`) when `flushItems` have accumulated or the oldest has
 * waited `flushMs`, with at most `maxInFlight` messages awaiting their ack; and at once (at the end
 * of the current turn, so results of one batch travel together) when no message awaits its ack: a
 * worker whose results trickle in does not make the hub wait `flushMs` for each (that wait was most
 * of its assignment latency), and one whose results pour in still batches them, behind the acks it
 * awaits. With `holdMs` (a native node sets 60 ms), results that come while the worker has more
 * work queued or running wait that long, or until they fill a message, for the next batch's: half
 * the messages, and their cost on both sides; the last results of a burst of work go at once.
 * A message whose emit fails
 * (timeout, disconnect) goes back to the front of the queue and is sent again once the worker is
 * registered again; the hub drops duplicates, so resending is always safe. So does one the hub
 * answers with an error that may pass (`internal`: its store failed; `rate_limited`), after a pause
 * that doubles with each such answer in a row (from `retryMs`, up to 30 s); a message refused for
 * what it is (a schema error) is not sent again, since it would be refused the same way. Nothing is
 * sent while offline: socket.io would buffer it and replay it blindly on reconnect.
 */
import type { Socket } from 'socket.io-client';
import type {
  HubToWorkerEvents,
  ItemFailure,
  ItemResult,
  ItemsDoneReply,
  WorkerToHubEvents,
} from '../protocol/events.ts';
import { LIMITS } from '../protocol/limits.ts';
import { packResults } from '../protocol/results-pack.ts';
import { tensorBytes } from '../protocol/pack.ts';
import { errorMessage, silentLogger, type WorkerLogger } from './backend.ts';
import { MAX_ATTACHMENTS } from '../protocol/socket-parser.ts';
import { systemClock, type Clock } from './clock.ts';

/** The socket a worker talks to the hub through (namespace `/worker`). */
export type WorkerSocket = Socket<HubToWorkerEvents, WorkerToHubEvents>;

/** Tuning of the outbox. */
export interface OutboxOptions {
  /** Send as soon as this many results wait (default 10). */
  flushItems?: number;
  /** Send whatever waits once the oldest has waited this long (default 5 ms). */
  flushMs?: number;
  /**
   * While `busy()` says more results are coming (the worker has items queued or running), results
   * wait up to this long (default 0: not held), or until they fill a message, instead of going out
   * at once or by `flushItems` and `flushMs`. See {@link Outbox}.
   */
  holdMs?: number;
  /** Whether the worker has more results coming (items queued or running). */
  busy?: () => boolean;
  /** Most messages awaiting an ack at once (default 4). */
  maxInFlight?: number;
  /** How long to wait for an ack before resending (default 30 s). */
  ackTimeoutMs?: number;
  /**
   * The pause before resending a message the hub answered with an error that may pass (default
   * 500 ms), doubled with each such answer in a row, up to {@link MAX_RETRY_MS}.
   */
  retryMs?: number;
  /** Most tensor bytes per message (default a quarter of the hub's message limit). */
  maxMessageBytes?: number;
  /**
   * Most tensors (binary attachments) per message (default `MAX_ATTACHMENTS`: what the hub's
   * `shardhubParser` accepts). See `protocol/socket-parser.ts`.
   */
  maxAttachments?: number;
  logger?: WorkerLogger;
  /** Time for its waits and pauses (default the system clock; tests drive one by hand). */
  clock?: Clock;
}

type Message = { kind: 'done'; results: ItemResult[] } | { kind: 'failed'; failures: ItemFailure[] };

/** Results or failures in a message. */
const sizeOf = (m: Message): number => (m.kind === 'done' ? m.results.length : m.failures.length);

/** Error codes of a hub's answer that may pass: the message is sent again after a pause. */
const PASSING_ERRORS: ReadonlySet<string> = new Set(['internal', 'rate_limited']);

/** The longest pause before resending a message the hub answered with an error that may pass. */
export const MAX_RETRY_MS = 30_000;

/** Figures the run loop shows. */
export interface OutboxCounts {
  /** Results and failures waiting to be sent, or to be sent again after an error. */
  pending: number;
  /** Messages sent and not yet acked. */
  inFlight: number;
  /** Results the hub acknowledged (accepted, dropped or refused). */
  acked: number;
}

/** Batches results and failures to the hub with bounded in-flight messages; see the file comment. */
export class Outbox {
  private readonly flushItems: number;
  private readonly flushMs: number;
  private readonly holdMs: number;
  private readonly busy: () => boolean;
  private readonly maxInFlight: number;
  private readonly ackTimeoutMs: number;
  private readonly retryMs: number;
  private readonly maxMessageBytes: number;
  private readonly maxAttachments: number;
  private readonly log: WorkerLogger;
  private results: ItemResult[] = [];
  private failures: ItemFailure[] = [];
  private oldest = 0;
  private online = false;
  private closed = false;
  private seq = 0;
  private readonly inFlight = new Map<number, Message>();
  /** Messages the hub answered with an error that may pass, each waiting its pause to go back. */
  private readonly retrying = new Map<() => void, Message>();
  /** Such answers in a row, reset by an ack: the next pause is `retryMs` × 2 to the power of this. */
  private errorsInARow = 0;
  private cancelTimer: (() => void) | undefined;
  private readonly clock: Clock;
  private idleWaiters: (() => void)[] = [];
  private ackedCount = 0;
  /** A send at the end of this turn is scheduled (nothing was in flight). */
  private soon = false;
  /** That send is running: results are due whatever their number or age. */
  private urgent = false;
  /** The hub takes packed results (its register reply said so). */
  private packed = false;

  constructor(
    private readonly socket: WorkerSocket,
    opts: OutboxOptions = {},
  ) {
    this.flushItems = positive('flushItems', opts.flushItems ?? 10);
    this.flushMs = nonNegative('flushMs', opts.flushMs ?? 5);
    this.holdMs = nonNegative('holdMs', opts.holdMs ?? 0);
    this.busy = opts.busy ?? (() => false);
    this.maxInFlight = positive('maxInFlight', opts.maxInFlight ?? 4);
    this.ackTimeoutMs = positive('ackTimeoutMs', opts.ackTimeoutMs ?? 30_000);
    this.retryMs = positive('retryMs', opts.retryMs ?? 500);
    this.maxMessageBytes = positive('maxMessageBytes', opts.maxMessageBytes ?? LIMITS.socketMessageBytes / 4);
    this.maxAttachments = positive('maxAttachments', opts.maxAttachments ?? MAX_ATTACHMENTS);
    this.log = opts.logger ?? silentLogger;
    this.clock = opts.clock ?? systemClock;
  }

  /** Current figures. */
  get counts(): OutboxCounts {
    return {
      pending:
        this.results.length +
        this.failures.length +
        [...this.retrying.values()].reduce((n, m) => n + sizeOf(m), 0),
      inFlight: this.inFlight.size,
      acked: this.ackedCount,
    };
  }

  /** True when nothing waits and nothing is in flight. */
  get idle(): boolean {
    return (
      this.results.length === 0 &&
      this.failures.length === 0 &&
      this.inFlight.size === 0 &&
      this.retrying.size === 0
    );
  }

  /** Queues a result. */
  addResult(result: ItemResult): void {
    if (this.closed) return;
    if (this.results.length === 0) this.oldest = this.clock.now();
    this.results.push(result);
    if (this.inFlight.size === 0 && !this.soon) {
      this.soon = true;
      queueMicrotask(() => {
        this.soon = false;
        this.urgent = !this.holding();
        this.pump();
        this.urgent = false;
      });
    }
    this.pump();
  }

  /** Queues a failure; failures go out without waiting for a batch. */
  addFailure(failure: ItemFailure): void {
    if (this.closed) return;
    this.failures.push(failure);
    this.pump();
  }

  /**
   * Online means registered on a live connection. Going offline puts every in-flight message back
   * in the queue (its ack will never come) so it is sent again after the next registration.
   */
  setOnline(online: boolean): void {
    this.online = online;
    if (!online) {
      const back = [...this.inFlight.values()];
      this.inFlight.clear();
      for (const m of back.reverse()) this.requeue(m);
      this.clearTimer();
    }
    this.pump();
  }

  /**
   * Sends results packed (one attachment per message, `ItemsDone.packed`) from now on, or as plain
   * tensors: set on each registration, from the hub's reply.
   */
  setPacked(packed: boolean): void {
    this.packed = packed;
  }

  /** Resolves when nothing waits and nothing is in flight. */
  whenIdle(): Promise<void> {
    if (this.idle) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /** Stops sending; what is still queued is dropped (the hub will time those items out). */
  close(): void {
    this.closed = true;
    this.clearTimer();
    for (const cancel of this.retrying.keys()) cancel();
    this.retrying.clear();
    this.results = [];
    this.failures = [];
    this.inFlight.clear();
    this.notifyIdle();
  }

  private pump(): void {
    if (this.closed || !this.online) return;
    while (this.inFlight.size < this.maxInFlight) {
      if (this.failures.length > 0) {
        this.send({ kind: 'failed', failures: this.failures.splice(0, LIMITS.itemsPerMessage) });
        continue;
      }
      if (this.results.length === 0) break;
      const age = this.clock.now() - this.oldest;
      // While holding, a message is due once the waiting results overflow one message.
      const fits = this.holding() ? this.fitting() : undefined;
      const due =
        this.urgent ||
        (fits !== undefined
          ? age >= this.holdMs || fits < this.results.length
          : this.results.length >= this.flushItems || age >= this.flushMs);
      if (!due) {
        this.armTimer();
        break;
      }
      this.send({ kind: 'done', results: this.takeResults(fits) });
    }
    if (this.results.length === 0) this.clearTimer();
    if (this.idle) this.notifyIdle();
  }

  /** Results wait for company: {@link OutboxOptions.holdMs} is set and more are coming. */
  private holding(): boolean {
    return this.holdMs > 0 && this.busy();
  }

  /** The first `n` waiting results (default: as many as {@link fitting} says one message takes). */
  private takeResults(n = this.fitting()): ItemResult[] {
    const taken = this.results.splice(0, n);
    this.oldest = this.clock.now();
    return taken;
  }

  /** How many of the waiting results, from the first, one message takes (at least one). */
  private fitting(): number {
    let bytes = 0;
    let tensors = 0;
    let n = 0;
    while (n < this.results.length && n < LIMITS.itemsPerMessage) {
      const outputs = (this.results[n] as ItemResult).outputs;
      const size = tensorBytes(outputs);
      // Always at least one result per message, whatever its size.
      if (n > 0 && (bytes + size > this.maxMessageBytes || tensors + outputs.length > this.maxAttachments))
        break;
      bytes += size;
      tensors += outputs.length;
      n++;
    }
    return n;
  }

  private send(msg: Message): void {
    const id = ++this.seq;
    this.inFlight.set(id, msg);
    const sock = this.socket.timeout(this.ackTimeoutMs);
    const reply =
      msg.kind === 'done'
        ? sock.emitWithAck(
            'items:done',
            this.packed ? { results: [], packed: packResults(msg.results) } : { results: msg.results },
          )
        : sock.emitWithAck('items:failed', { failures: msg.failures });
    reply.then(
      (res) => {
        if (!this.inFlight.delete(id)) return; // already requeued after a disconnect
        const count = sizeOf(msg);
        if ('error' in res && PASSING_ERRORS.has(res.error.code)) {
          const waitMs = Math.min(MAX_RETRY_MS, this.retryMs * 2 ** this.errorsInARow++);
          this.log.warn(
            { kind: msg.kind, count, code: res.error.code, error: res.error.message, waitMs },
            'hub could not take results message; will resend',
          );
          this.resendAfter(msg, waitMs);
        } else if ('error' in res) {
          // The hub refused the whole message (e.g. a schema error): resending would fail the same way.
          this.log.error(
            { kind: msg.kind, count, code: res.error.code, error: res.error.message },
            'hub refused results message',
          );
        } else {
          this.errorsInARow = 0;
          this.ackedCount += count;
          const refused = msg.kind === 'done' ? ((res.data as ItemsDoneReply).refused ?? []) : [];
          // One line per message, not per item: a systematic refusal would otherwise flood the log.
          if (refused.length > 0) {
            this.log.warn(
              {
                refused: refused.length,
                of: count,
                first: refused[0],
                itemIds: refused.slice(0, 20).map((r) => r.itemId),
              },
              'hub refused results',
            );
          }
        }
        this.pump();
      },
      (err: unknown) => {
        if (!this.inFlight.delete(id)) return;
        this.log.warn(
          { kind: msg.kind, error: errorMessage(err) },
          'results message not acknowledged; will resend',
        );
        this.requeue(msg);
        this.pump();
      },
    );
  }

  /** Puts a message back in the queue after `ms` (see {@link OutboxOptions.retryMs}). */
  private resendAfter(msg: Message, ms: number): void {
    const cancel = this.clock.after(ms, () => {
      this.retrying.delete(cancel);
      this.requeue(msg);
      this.pump();
    });
    this.retrying.set(cancel, msg);
  }

  private requeue(msg: Message): void {
    if (msg.kind === 'done') {
      this.results.unshift(...msg.results);
      this.oldest = 0; // overdue: send as soon as possible
    } else {
      this.failures.unshift(...msg.failures);
    }
  }

  private armTimer(): void {
    if (this.cancelTimer !== undefined) return;
    const wait = Math.max(
      0,
      (this.holding() ? this.holdMs : this.flushMs) - (this.clock.now() - this.oldest),
    );
    this.cancelTimer = this.clock.after(wait, () => {
      this.cancelTimer = undefined;
      this.pump();
    });
  }

  private clearTimer(): void {
    this.cancelTimer?.();
    this.cancelTimer = undefined;
  }

  private notifyIdle(): void {
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    for (const w of waiters) w();
  }
}

function positive(name: string, v: number): number {
  if (!(Number.isFinite(v) && v > 0)) throw new RangeError(`${name} must be greater than 0`);
  return v;
}

function nonNegative(name: string, v: number): number {
  if (!(Number.isFinite(v) && v >= 0)) throw new RangeError(`${name} must be 0 or more`);
  return v;
}
