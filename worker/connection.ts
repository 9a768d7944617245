/**
 * A worker's connection to its hubs, shared by the native node (`native/node.ts`) and the browser
 * worker (`client/browser/browser-worker.ts`):
 *
 * - One Socket.IO socket to `${hub}/worker`, with `shardhubParser` and the protocol version in its
 *   handshake. Socket.IO reconnects by itself with backoff and jitter after a network failure; it
 *   does not after a server-side disconnect or a refusal by the hub's middleware, and a
 *   {@link Reconnector} does then, with the same backoff.
 * - Several hubs (`--hub URL1,URL2`): after a connection loss, every attempt goes to the next hub of
 *   the list, round and round, until one answers; the worker stays there. The agent registers again
 *   on connecting, and its outbox resends the results no hub has acknowledged.
 * - Refusals are read by their code (`protocol/errors.ts`), never by their text. What a code means
 *   to this worker (stop for good, renew its identity, retry) is the owner's `refused` decision.
 */
import { io } from 'socket.io-client';
import { PROTOCOL_VERSION, type ErrorBody, type WorkerAuth } from '../protocol/events.ts';
import { isErrorCode, refusalCode, type ErrorCode } from '../protocol/errors.ts';
import { shardhubParser } from '../protocol/socket-parser.ts';
import type { WorkerAgent, WorkerSocket } from './agent.ts';
import type { WorkerLogger } from './backend.ts';
import { Reconnector } from './reconnect.ts';

/**
 * What a refusal means to a worker: an error to stop with for good, `'retry'` when the owner has
 * fixed what it could (a browser's new identity) and the worker connects again, or undefined for a
 * code it takes no action on (a refused connection is retried, a refused registration logged).
 */
export type RefusalDecision = Error | 'retry' | undefined;

/** Options of a {@link HubConnection}. */
export interface HubConnectionOptions {
  /** The hubs' base URLs, tried in this order (at least one). */
  hubs: readonly string[];
  /** The handshake's credentials, read at every attempt (a browser may renew its identity). */
  auth: () => WorkerAuth;
  /** Socket.IO transports (a native node's unmasked WebSocket; a browser's WebSocket, then polling). */
  transports: NonNullable<Parameters<typeof io>[1]>['transports'];
  /** Try the next transport when the first fails (browsers behind proxies that block WebSocket). */
  tryAllTransports?: boolean;
  log: WorkerLogger;
  /** Makes a string from the hub safe to log (control characters escaped); default: bounded only. */
  clean?: (s: unknown) => string;
  /** First reconnection delay (ms), doubling on every attempt up to `maxDelayMs`. */
  delayMs: number;
  maxDelayMs: number;
  /** Each delay moves by up to this fraction either way. */
  jitter: number;
  /** Decides what a refusal with a known code means; see {@link RefusalDecision}. */
  refused: (code: ErrorCode, message: string) => RefusalDecision;
  /** The worker id, for logs (read when logging: a browser's may change). */
  workerId: () => string;
  /**
   * The local address to connect from (Node.js only): a machine with several addresses behind a
   * balancer that hashes the client's address (HAProxy's `balance source`) spreads its nodes over
   * the hubs by giving each its own.
   */
  localAddress?: string;
}

/** A worker's socket to its hubs; see the file comment. Build it, then hand `socket` to the agent. */
export class HubConnection {
  readonly socket: WorkerSocket;
  private index = 0;
  private failures = 0;
  private fatalError: Error | undefined;
  private agent: WorkerAgent | undefined;
  private readonly reconnector: Reconnector;
  private readonly fatalListeners = new Set<(err: Error) => void>();
  private readonly clean: (s: unknown) => string;

  constructor(private readonly o: HubConnectionOptions) {
    if (o.hubs.length === 0) throw new RangeError('hubs must name at least one hub');
    this.clean = o.clean ?? ((s) => String(s).slice(0, 200));
    this.socket = io(`${this.hub}/worker`, {
      auth: (cb) => cb({ ...o.auth(), protocol: PROTOCOL_VERSION }),
      autoConnect: false,
      transports: o.transports,
      ...(o.tryAllTransports ? { tryAllTransports: true } : {}),
      // engine.io-client passes `localAddress` on to `ws` (not in its option types).
      ...(o.localAddress ? ({ localAddress: o.localAddress } as object) : {}),
      reconnection: true,
      reconnectionDelay: o.delayMs,
      reconnectionDelayMax: o.maxDelayMs,
      randomizationFactor: o.jitter,
      // Accept shard:assign packets with more than Socket.IO's default 10 tensors.
      parser: shardhubParser,
    }) as WorkerSocket;
    this.reconnector = new Reconnector({
      socket: this.socket,
      log: o.log,
      delayMs: o.delayMs,
      maxDelayMs: o.maxDelayMs,
      jitter: o.jitter,
      stopping: () => this.stopping(),
      onAttempt: () => this.nextHub(),
    });
    // Socket.IO's own retries (after a network failure) go to the next hub too.
    this.socket.io.on('reconnect_attempt', () => this.nextHub());
    this.socket.on('connect', () => {
      this.reconnector.reset();
      this.failures = 0;
      o.log.info({ hub: this.clean(this.hub), workerId: o.workerId() }, 'connected to hub');
    });
    this.socket.on('disconnect', (reason) => {
      // A lost connection is worth a warning; the end of a drain or a close is not.
      const ending = this.stopping() || this.agent?.status === 'draining';
      if (reason !== 'io client disconnect' && !ending) o.log.warn({ reason }, 'disconnected from hub');
      if (reason === 'io server disconnect') this.reconnector.later();
    });
    this.socket.on('connect_error', (err: Error & { data?: unknown }) => {
      this.failures++;
      if (this.socket.active) {
        // A network-level failure: Socket.IO retries by itself with backoff.
        if (this.failures === 1 || this.failures % 10 === 0)
          o.log.warn(
            { hub: this.clean(this.hub), error: this.clean(err.message), failures: this.failures },
            'cannot reach hub; retrying',
          );
        return;
      }
      const code = refusalCode(err);
      const decision = code ? this.decide(code, err.message) : undefined;
      if (decision === undefined)
        o.log.warn({ code, error: this.clean(err.message) }, 'hub refused the connection');
      if (decision !== undefined && decision !== 'retry') return;
      this.reconnector.later();
    });
  }

  /** The base URL of the hub this worker is connected to, or trying next. */
  get hub(): string {
    return this.o.hubs[this.index] as string;
  }

  /** The error the worker stopped with for good, if it did. */
  get fatal(): Error | undefined {
    return this.fatalError;
  }

  /** Wires the agent that uses {@link socket}: its refused registrations, its close. */
  attach(agent: WorkerAgent): void {
    this.agent = agent;
    // The hub checks the join token at registration: it refuses, then disconnects.
    agent.on('error', (err: ErrorBody) => {
      const decision = isErrorCode(err.code) ? this.decide(err.code, err.message) : undefined;
      if (decision === undefined)
        this.o.log.error(
          { code: this.clean(err.code), error: this.clean(err.message) },
          'hub refused registration',
        );
      else if (decision === 'retry') this.reconnector.later();
    });
    agent.on('closed', () => this.reconnector.cancel());
  }

  /** Called once if the worker stops for good (with the reason); returns the unsubscribe. */
  onFatal(fn: (err: Error) => void): () => void {
    this.fatalListeners.add(fn);
    return () => this.fatalListeners.delete(fn);
  }

  /** Stops the worker for good: logs why, tells the listeners, closes the agent. */
  stop(err: Error): void {
    if (this.fatalError) return;
    this.fatalError = err;
    this.o.log.error({ error: err.message }, 'worker stopping');
    for (const l of this.fatalListeners) l(err);
    void this.agent?.close();
  }

  /** Drops this connection and connects again after the next backoff delay (to the next hub). */
  reconnect(): void {
    if (this.socket.connected) this.socket.disconnect();
    this.reconnector.later();
  }

  /** Ends the connection: no more reconnects, no more listeners, the socket disconnected. */
  close(): void {
    this.reconnector.cancel();
    this.socket.off();
    this.socket.io.off('reconnect_attempt');
    this.socket.disconnect();
  }

  private stopping(): boolean {
    return this.fatalError !== undefined || this.agent?.status === 'closed';
  }

  private decide(code: ErrorCode, message: string): RefusalDecision {
    const decision = this.o.refused(code, this.clean(message));
    if (decision instanceof Error) this.stop(decision);
    return decision;
  }

  /** The next hub of the list, for the next attempt (nothing with one hub). */
  private nextHub(): void {
    if (this.o.hubs.length < 2) return;
    this.index = (this.index + 1) % this.o.hubs.length;
    // The manager opens each attempt's engine from its `uri` (socket.io-client 4's `Manager.open`);
    // the namespace stays `/worker`, and the engine takes host, port and TLS from the new URL.
    (this.socket.io as unknown as { uri: string }).uri = `${this.hub}/worker`;
    this.o.log.info({ hub: this.clean(this.hub) }, 'trying the next hub');
  }
}
