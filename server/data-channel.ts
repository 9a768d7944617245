/**
 * The hub's side of native nodes' data channels (the protocol is in `protocol/data-channel.ts`):
 * tickets in register replies, the HTTP upgrade that opens a channel, and frames of shard inputs.
 *
 * A channel is bound to the Socket.IO connection its ticket was issued on. The hub sends on it only
 * while that connection is the worker's current one; when the channel closes under a live
 * connection, the hub disconnects that connection (its items go back to the queue, the node
 * reconnects), because frames in flight may be lost with it.
 */
import { createHash, randomBytes } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import {
  DATA_CHANNEL_ACCEPT,
  DATA_CHANNEL_PROTOCOL,
  DATA_TICKET_TTL_MS,
  encodeFrameHeader,
  type FrameHeader,
} from '../protocol/data-channel.ts';
import type { ModelInfo } from '../protocol/model.ts';
import { PackError, unpackTensors } from '../protocol/pack.ts';
import { clean, type Logger } from './logger.ts';

/** Most tickets outstanding at once (one per registering native node; stale ones expire). */
const MAX_TICKETS = 100_000;

interface Ticket {
  workerId: string;
  socketId: string;
  expires: number;
}

/** An open channel and the Socket.IO connection it belongs to. */
interface Bound {
  socket: Socket;
  socketId: string;
}

/** What {@link DataChannels} asks of the hub. */
export interface DataChannelHost {
  log: Logger;
  /** The id of the worker's current Socket.IO connection, if it is connected. */
  socketIdOf(workerId: string): string | undefined;
  /** The channel of this connection closed while it was live: disconnect it. */
  lost(workerId: string, socketId: string, reason: string): void;
}

/** Figures for the metrics endpoint and tests. */
export interface DataChannelStats {
  open: number;
  frames: number;
  items: number;
  bytes: number;
  refused: number;
}

/** Tickets, upgrades and frames; see the file comment. */
export class DataChannels {
  /** Outstanding tickets by the sha256 of the ticket. */
  private readonly tickets = new Map<string, Ticket>();
  /** Each worker's outstanding ticket (its digest): a new one replaces it. */
  private readonly ticketOf = new Map<string, string>();
  private lastRefusalLog = 0;
  private readonly channels = new Map<string, Bound>();
  private closed = false;
  private readonly counts = { frames: 0, items: 0, bytes: 0, refused: 0 };

  constructor(
    private readonly host: DataChannelHost,
    readonly ticketTtlMs = DATA_TICKET_TTL_MS,
  ) {}

  /** Open channels, and what has gone down them or been refused since the hub started. */
  get stats(): DataChannelStats {
    return { open: this.channels.size, ...this.counts };
  }

  /** A ticket for this worker's connection `socketId` to open its channel with. */
  issue(workerId: string, socketId: string): string {
    const now = Date.now();
    if (this.tickets.size >= MAX_TICKETS) this.sweep(now);
    this.forget(workerId);
    const ticket = randomBytes(32).toString('base64url');
    const key = digest(ticket);
    this.tickets.set(key, { workerId, socketId, expires: now + this.ticketTtlMs });
    this.ticketOf.set(workerId, key);
    return ticket;
  }

  /** Handles an HTTP upgrade to the data channel path: binds the channel, or refuses with a reason. */
  accept(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    const refuse = (status: string, reason: string): void => {
      this.counts.refused++;
      // Logged at most once a second: refusals cost a hostile client nothing to cause.
      if (Date.now() - this.lastRefusalLog >= 1000) {
        this.lastRefusalLog = Date.now();
        this.host.log.warn(
          { address: clean(req.socket.remoteAddress ?? '', 64), reason, refused: this.counts.refused },
          'data channel refused',
        );
      }
      socket.end(`HTTP/1.1 ${status}\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n${reason}\n`);
      socket.on('error', () => undefined);
    };
    if (this.closed) return refuse('503 Service Unavailable', 'the hub is closing');
    if (req.method !== 'GET' || String(req.headers.upgrade ?? '').toLowerCase() !== DATA_CHANNEL_PROTOCOL)
      return refuse('400 Bad Request', `expected GET with Upgrade: ${DATA_CHANNEL_PROTOCOL}`);
    if (head.byteLength > 0) return refuse('400 Bad Request', 'no bytes may follow the upgrade request');
    const auth = String(req.headers.authorization ?? '');
    const m = /^Bearer ([A-Za-z0-9_-]{16,128})$/.exec(auth);
    const key = m ? digest(m[1] as string) : undefined;
    const ticket = key ? this.tickets.get(key) : undefined;
    if (!key || !ticket) return refuse('401 Unauthorized', 'unknown or used data channel ticket');
    this.forget(ticket.workerId);
    if (ticket.expires < Date.now()) return refuse('401 Unauthorized', 'data channel ticket expired');
    const { workerId, socketId } = ticket;
    if (this.host.socketIdOf(workerId) !== socketId)
      return refuse('409 Conflict', 'the connection this ticket was issued on has ended');

    const sock = socket as Socket;
    sock.setNoDelay(true);
    sock.write(DATA_CHANNEL_ACCEPT);
    this.drop(workerId);
    const bound: Bound = { socket: sock, socketId };
    this.channels.set(workerId, bound);
    // The node sends nothing after its request: anything more is a protocol error.
    sock.on('data', () => sock.destroy(new Error('the node sent bytes on the data channel')));
    // The HTTP server's sockets allow half-open connections: the node's end closes the channel.
    sock.on('end', () => sock.destroy());
    sock.on('error', (err) => this.ended(workerId, bound, err.message));
    sock.on('close', () => this.ended(workerId, bound, 'closed'));
    this.host.log.info({ workerId }, 'data channel open');
  }

  /** The open channel of a worker's connection `socketId`, if there is one. */
  of(workerId: string, socketId: string): Socket | undefined {
    const b = this.channels.get(workerId);
    return b && b.socketId === socketId && !b.socket.destroyed ? b.socket : undefined;
  }

  /**
   * Sends a shard's items down a channel: their packs' tensors, with no copy (written as views, in
   * one `writev`). An item whose pack does not parse goes with the reason instead of its tensors.
   */
  send(
    channel: Socket,
    head: { shardId: string; jobId: string; model: ModelInfo },
    ids: readonly number[],
    packs: readonly Uint8Array[],
  ): void {
    const items: FrameHeader['items'] = [];
    const data: Uint8Array[] = [];
    let bytes = 0;
    ids.forEach((id, i) => {
      try {
        const tensors = unpackTensors(packs[i] as Uint8Array);
        items.push({ id, tensors: tensors.map((t) => ({ n: t.name, t: t.dtype, d: t.dims })) });
        for (const t of tensors) {
          if (t.data.byteLength > 0) data.push(t.data);
          bytes += t.data.byteLength;
        }
      } catch (err) {
        items.push({ id, error: err instanceof PackError ? err.message : 'unreadable inputs' });
      }
    });
    channel.cork();
    channel.write(encodeFrameHeader({ ...head, items }));
    for (const d of data) channel.write(d);
    channel.uncork();
    this.counts.frames++;
    this.counts.items += ids.length;
    this.counts.bytes += bytes;
  }

  /** Closes a worker's channel (its connection ended) and forgets its ticket. */
  gone(workerId: string): void {
    this.forget(workerId);
    this.drop(workerId);
  }

  /** Closes every channel; refuses new ones. */
  close(): void {
    this.closed = true;
    this.tickets.clear();
    this.ticketOf.clear();
    for (const workerId of [...this.channels.keys()]) this.drop(workerId);
  }

  /** Drops expired tickets. */
  sweep(now = Date.now()): void {
    for (const [key, t] of this.tickets) {
      if (t.expires >= now) continue;
      this.tickets.delete(key);
      if (this.ticketOf.get(t.workerId) === key) this.ticketOf.delete(t.workerId);
    }
  }

  private forget(workerId: string): void {
    const key = this.ticketOf.get(workerId);
    if (key === undefined) return;
    this.ticketOf.delete(workerId);
    this.tickets.delete(key);
  }

  private drop(workerId: string): void {
    const b = this.channels.get(workerId);
    if (!b) return;
    this.channels.delete(workerId);
    b.socket.destroy();
  }

  private ended(workerId: string, bound: Bound, reason: string): void {
    if (this.channels.get(workerId) !== bound) return; // dropped on purpose, or replaced
    this.channels.delete(workerId);
    this.host.log.warn({ workerId, reason: clean(reason) }, 'data channel lost; disconnecting the worker');
    this.host.lost(workerId, bound.socketId, `data channel lost: ${reason}`);
  }
}

function digest(ticket: string): string {
  return createHash('sha256').update(ticket).digest('hex');
}
