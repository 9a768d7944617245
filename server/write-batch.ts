/**
 * One TCP write per connection for what the hub sends while a batch is open.
 *
 * A results message is answered with two packets: the worker's refill (`shard:assign`, a JSON frame
 * and a binary frame) and the ack. engine.io hands a connection's first packet to the transport at
 * once and holds the rest until that write's callback, so they left in six write system calls
 * (test/integration/group-commit.test.ts counts them); batched, they leave in one. On loopback most
 * of a write's cost is waking the receiver, so the gain is in system calls more than in time.
 *
 * While a batch is open, an adopted connection's `flush()` (the one place engine.io hands packets
 * to the transport) only notes the connection. When the batch closes, each noted connection
 * flushes once with its TCP socket corked, so its frames share one write.
 *
 * A batch closes once the microtasks queued inside it have run: replies resolved inside it are
 * promises, and their handlers (the acks) are among those microtasks. A packet sent later than that
 * is not lost, only written on its own, as without a batch.
 *
 * engine.io 6's `Socket.flush` and its WebSocket transport's `socket` (a `ws` WebSocket, whose
 * `_socket` is the `net.Socket`) are not public API. A connection of another shape is left as it
 * is; one without the socket is flushed uncorked.
 */

/** The parts of an engine.io connection (`socket.conn`) this uses. */
interface EngineConn {
  flush(): void;
  readyState?: string;
  transport?: { socket?: { _socket?: { cork?(): void; uncork?(): void } } };
}

export class WriteBatch {
  private depth = 0;
  private readonly held = new Set<EngineConn>();
  private readonly flushNow = new WeakMap<EngineConn, () => void>();
  /** Batches closed so far, and the connections flushed when they closed (the tests read them). */
  readonly stats = { batches: 0, flushes: 0 };

  /** Makes `conn`'s flushes wait while a batch is open. Adopting a connection twice does nothing. */
  adopt(conn: unknown): void {
    const c = conn as EngineConn | undefined;
    if (!c || typeof c.flush !== 'function' || this.flushNow.has(c)) return;
    const flush = c.flush.bind(c);
    this.flushNow.set(c, flush);
    c.flush = () => {
      if (this.depth > 0) this.held.add(c);
      else flush();
    };
  }

  /** Runs `fn` with a batch open (see the file comment for when it closes). */
  around<T>(fn: () => T): T {
    this.depth++;
    try {
      return fn();
    } finally {
      queueMicrotask(() => {
        if (--this.depth === 0) this.release();
      });
    }
  }

  private release(): void {
    this.stats.batches++;
    for (const c of this.held) {
      this.held.delete(c);
      const flush = this.flushNow.get(c);
      if (!flush || c.readyState === 'closed') continue;
      const tcp = c.transport?.socket?._socket;
      tcp?.cork?.();
      try {
        flush();
        this.stats.flushes++;
      } catch {
        // engine.io reports a transport's write errors itself ('error' on the connection).
      } finally {
        tcp?.uncork?.();
      }
    }
  }
}
