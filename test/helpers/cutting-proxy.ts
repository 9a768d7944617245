/**
 * A TCP proxy on loopback in front of a hub that drops every connection at chosen moments, as a
 * flaky network or a restarting hub does: once the clients have sent a number of bytes (a request
 * cut off mid-body), or when the hub answers a request with a given status line (the request was
 * handled, its reply is lost). After a cut it refuses connections for a while.
 */
import { createServer, connect, type Server, type Socket } from 'node:net';

/** When to cut. */
export type Cut =
  | { afterUpBytes: number; refuseMs: number }
  | { replyStartingWith: string; afterUpBytes: number; refuseMs: number };

export class CuttingProxy {
  /** Bytes the clients have sent through the proxy. */
  upBytes = 0;
  /** What happened, one line each (for failure messages). */
  readonly events: string[] = [];
  private readonly sockets = new Set<Socket>();
  private refusingUntil = 0;
  private readonly server: Server;

  private constructor(
    private readonly target: number,
    private readonly cuts: Cut[],
  ) {
    this.server = createServer((client) => this.accept(client));
  }

  /** Starts a proxy to `127.0.0.1:targetPort` on a free port. */
  static async start(targetPort: number, cuts: Cut[]): Promise<CuttingProxy> {
    const p = new CuttingProxy(targetPort, cuts);
    await new Promise<void>((ok) => p.server.listen(0, '127.0.0.1', ok));
    return p;
  }

  get url(): string {
    const addr = this.server.address();
    return `http://127.0.0.1:${typeof addr === 'object' && addr ? addr.port : 0}`;
  }

  /** The cuts not made yet. */
  get pending(): number {
    return this.cuts.length;
  }

  private accept(client: Socket): void {
    if (Date.now() < this.refusingUntil) {
      client.resetAndDestroy();
      return;
    }
    const upstream = connect(this.target, '127.0.0.1');
    for (const s of [client, upstream]) {
      this.sockets.add(s);
      s.on('close', () => this.sockets.delete(s));
      s.on('error', () => undefined);
    }
    client.on('close', () => upstream.destroy());
    upstream.on('close', () => client.destroy());
    let doomed = false; // being cut: nothing more goes through
    client.on('data', (d: Buffer) => {
      if (doomed) return;
      this.upBytes += d.length;
      const next = this.cuts[0];
      if (next && !('replyStartingWith' in next) && this.upBytes >= next.afterUpBytes) {
        // Half of this packet goes on: the request is cut off in the middle.
        this.cuts.shift();
        doomed = true;
        const what = `mid-request at ${this.upBytes} bytes up`;
        upstream.write(d.subarray(0, d.length >> 1), () => this.cut(next, what));
        return;
      }
      upstream.write(d);
    });
    upstream.on('data', (d: Buffer) => {
      const next = this.cuts[0];
      if (
        next &&
        'replyStartingWith' in next &&
        this.upBytes >= next.afterUpBytes &&
        d.toString('latin1').startsWith(next.replyStartingWith)
      ) {
        this.cuts.shift();
        this.cut(next, `reply lost: ${d.toString('latin1').split('\r\n')[0]}`);
        return;
      }
      client.write(d);
    });
  }

  /** Drops every connection and refuses new ones for the cut's `refuseMs`. */
  private cut(c: Cut, what: string): void {
    this.events.push(what);
    this.refusingUntil = Date.now() + c.refuseMs;
    for (const s of this.sockets) s.resetAndDestroy();
    this.sockets.clear();
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((ok) => this.server.close(() => ok()));
  }
}
