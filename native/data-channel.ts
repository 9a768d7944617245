/**
 * A native node's side of its data channel (protocol: `protocol/data-channel.ts`): one TCP
 * connection to the hub, read with `net.Socket`'s `onread` option so that every read lands where
 * the node says. A tensor's bytes go straight into the place the backend reserved for them (a
 * staging buffer, `native/staging.ts`), a frame's length and header into buffers of exactly their
 * size. Nothing is allocated per read, no stream callback runs, and nothing is copied after the
 * kernel's copy. The upgrade answer is read as HTTP (`parseAnswerHead`), whatever a proxy did to
 * its headers' case and order; bytes of the first frame that came in the same read are passed on.
 */
import { connect, type Socket } from 'node:net';
import {
  acceptsDataChannel,
  DATA_CHANNEL_PROTOCOL,
  DataChannelError,
  MAX_ANSWER_HEAD_BYTES,
  MAX_FRAME_HEADER_BYTES,
  parseAnswerHead,
  parseFrameHeader,
  type FrameHeader,
} from '../protocol/data-channel.ts';
import type { ShardAssign } from '../protocol/events.ts';
import type { ModelInfo } from '../protocol/model.ts';
import { byteLengthOf, type WireTensor } from '../protocol/tensor.ts';
import type { ShardItem } from '../worker/agent.ts';

/** How long the hub has to answer the upgrade request. */
const OPEN_TIMEOUT_MS = 10_000;
/** Most bytes of a refusal kept for its message. */
const REFUSAL_BYTES = 1024;

/** Options of {@link DataChannelClient}. */
export interface DataChannelOptions {
  /** The hub's base URL; `http:` only. */
  hub: string;
  /** Path and ticket from the register reply. */
  path: string;
  ticket: string;
  /** The local address to connect from, the node's Socket.IO connection's (see `NodeOptions`). */
  localAddress?: string;
  /**
   * Places for an item's inputs (the backend's staging buffers), or undefined for fresh buffers.
   * Each place must be exactly its tensor's size.
   */
  reserve(model: ModelInfo, inputs: Omit<WireTensor, 'data'>[]): WireTensor[] | undefined;
  /** A whole frame arrived: its shard's items, their inputs in place. */
  onShard(shard: Pick<ShardAssign, 'shardId' | 'jobId' | 'model'>, items: ShardItem[]): void;
  /** The hub accepted the channel. */
  onOpen?(): void;
  /**
   * The channel ended, once: `err` says why, undefined when {@link DataChannelClient.close} ended
   * it. `opened` says whether the hub had accepted it.
   */
  onClose(err: Error | undefined, opened: boolean): void;
}

/** One data channel to a hub; see the file comment. */
export class DataChannelClient {
  /** Where the next read goes, how much of it is filled, and what to do once it is full. */
  private buf: Uint8Array;
  private filled = 0;
  private then: () => void;
  private readonly socket: Socket;
  private opened = false;
  /** Reading the answer's head: each read is searched for the blank line that ends it. */
  private inHead = true;
  private ended = false;
  private error: Error | undefined;
  private readonly refusal: Uint8Array[] = [];
  private readonly openTimer: ReturnType<typeof setTimeout>;
  /** Figures for tests: frames and bytes received after the upgrade. */
  readonly stats = { frames: 0, items: 0, bytes: 0 };

  constructor(private readonly opts: DataChannelOptions) {
    const url = new URL(opts.hub);
    if (url.protocol !== 'http:') throw new DataChannelError('data channels need an http: hub');
    if (!/^\/[A-Za-z0-9/_-]{0,200}$/.test(opts.path))
      throw new DataChannelError('the hub sent a malformed data channel path');
    if (!/^[A-Za-z0-9_-]{16,128}$/.test(opts.ticket))
      throw new DataChannelError('the hub sent a malformed data channel ticket');

    this.buf = new Uint8Array(MAX_ANSWER_HEAD_BYTES);
    this.then = () => {
      throw new DataChannelError(`the hub's answer has no end within ${MAX_ANSWER_HEAD_BYTES} bytes`);
    };
    this.socket = connect({
      host: url.hostname.replace(/^\[|\]$/g, ''),
      port: Number(url.port || 80),
      ...(opts.localAddress ? { localAddress: opts.localAddress } : {}),
      onread: { buffer: () => this.buf.subarray(this.filled), callback: (n: number) => this.onRead(n) },
    });
    this.socket.once('connect', () => {
      this.socket.write(
        `GET ${opts.path} HTTP/1.1\r\nHost: ${url.host}\r\nConnection: Upgrade\r\n` +
          `Upgrade: ${DATA_CHANNEL_PROTOCOL}\r\nAuthorization: Bearer ${opts.ticket}\r\n\r\n`,
      );
    });
    this.socket.on('error', (err) => (this.error ??= err));
    this.socket.on('close', () => this.finish());
    this.openTimer = setTimeout(
      () => this.fail(new DataChannelError('the hub did not answer the data channel request')),
      OPEN_TIMEOUT_MS,
    );
    this.openTimer.unref();
  }

  /** Ends the channel (no error). */
  close(): void {
    if (this.ended) return;
    this.ended = true;
    clearTimeout(this.openTimer);
    this.socket.destroy();
    this.opts.onClose(undefined, this.opened);
  }

  /** A read of `n` bytes went into `buf` at `filled`. */
  private onRead(n: number): boolean {
    if (this.ended) return false;
    this.filled += n;
    if (this.opened) this.stats.bytes += n;
    try {
      if (this.inHead) this.headRead(n);
      while (this.filled === this.buf.byteLength && !this.ended) this.then();
    } catch (err) {
      this.fail(err instanceof Error ? err : new DataChannelError(String(err)));
      return false;
    }
    return true;
  }

  /** The next read goes into `buf`, and `then` runs when it is full. */
  private expect(buf: Uint8Array, then: () => void): void {
    this.buf = buf;
    this.filled = 0;
    this.then = then;
  }

  /** A read of `n` bytes into the answer's head: once its blank line is in, the head is done. */
  private headRead(n: number): void {
    const from = Math.max(0, this.filled - n - 3);
    const text = Buffer.from(this.buf.buffer, this.buf.byteOffset, this.filled).toString('latin1');
    const end = /\r?\n\r?\n/.exec(text.slice(from));
    if (!end) return;
    this.inHead = false;
    const headEnd = from + end.index;
    const rest = this.buf.slice(headEnd + end[0].length, this.filled);
    const head = parseAnswerHead(text.slice(0, headEnd));
    if (!head || head.status !== 101) {
      // A refusal: keep what came, and the rest up to a bound, for its message at close.
      this.refusal.push(this.buf.slice(0, this.filled));
      this.expect(new Uint8Array(REFUSAL_BYTES), () => {
        if (this.refusal.length < 2) this.refusal.push(this.buf.slice());
        this.expect(this.buf, this.then);
      });
      return;
    }
    if (!acceptsDataChannel(head))
      throw new DataChannelError(
        `the hub answered 101 without upgrading to ${DATA_CHANNEL_PROTOCOL} (upgrade: "${head.headers.get('upgrade') ?? ''}")`,
      );
    this.opened = true;
    clearTimeout(this.openTimer);
    this.opts.onOpen?.();
    this.nextFrame();
    this.stats.bytes += rest.byteLength;
    this.feed(rest);
  }

  /** Bytes read past the answer's head (the first frame's) go where the next reads would have. */
  private feed(bytes: Uint8Array): void {
    let off = 0;
    while (off < bytes.byteLength && !this.ended) {
      const n = Math.min(this.buf.byteLength - this.filled, bytes.byteLength - off);
      this.buf.set(bytes.subarray(off, off + n), this.filled);
      this.filled += n;
      off += n;
      while (this.filled === this.buf.byteLength && !this.ended) this.then();
    }
  }

  private nextFrame(): void {
    this.expect(new Uint8Array(4), () => {
      const len = new DataView(this.buf.buffer, this.buf.byteOffset, 4).getUint32(0, true);
      if (len === 0 || len > MAX_FRAME_HEADER_BYTES)
        throw new DataChannelError(`frame header length ${len} is out of range`);
      this.expect(new Uint8Array(len), () => this.header(parseFrameHeader(this.buf)));
    });
  }

  /** A frame's header arrived: reserve its tensors' places and read into them, one by one. */
  private header(h: FrameHeader): void {
    const places: Uint8Array[] = [];
    const items: ShardItem[] = h.items.map((item) => {
      if (item.error !== undefined || !item.tensors) {
        const why = item.error ?? 'the hub sent no inputs';
        return {
          id: item.id,
          inputs: () => {
            throw new DataChannelError(why);
          },
        };
      }
      const wanted = item.tensors.map((t) => ({ name: t.n, dtype: t.t, dims: t.d }));
      const sizes = item.tensors.map((t) => byteLengthOf(t.t, t.d));
      let inputs: WireTensor[] | undefined;
      try {
        inputs = this.opts.reserve(h.model, wanted);
      } catch {
        inputs = undefined;
      }
      if (!inputs || inputs.length !== wanted.length || inputs.some((t, j) => t.data.byteLength !== sizes[j]))
        inputs = wanted.map((t, j) => ({ ...t, data: new Uint8Array(sizes[j] as number) }));
      for (const t of inputs) if (t.data.byteLength > 0) places.push(t.data);
      const ready = inputs;
      return { id: item.id, inputs: () => ready };
    });
    const shard = { shardId: h.shardId, jobId: h.jobId, model: h.model };
    let i = 0;
    const fill = (): void => {
      const place = places[i++];
      if (place) return this.expect(place, fill);
      this.stats.frames++;
      this.stats.items += items.length;
      this.nextFrame();
      this.opts.onShard(shard, items);
    };
    fill();
  }

  private fail(err: Error): void {
    this.error ??= err;
    this.socket.destroy();
    this.finish();
  }

  private finish(): void {
    if (this.ended) return;
    this.ended = true;
    clearTimeout(this.openTimer);
    let err = this.error;
    if (!this.opened) {
      const said = Buffer.concat([...this.refusal, this.buf.subarray(0, this.filled)])
        .toString('latin1')
        .slice(0, MAX_ANSWER_HEAD_BYTES + REFUSAL_BYTES);
      const [headText = '', ...bodyParts] = said.split(/\r?\n\r?\n/);
      const head = parseAnswerHead(headText.split(/\r?\n/)[0] ?? '');
      const body = bodyParts.join('\n\n').trim().split('\n')[0];
      if (head && head.status !== 101)
        err = new DataChannelError(
          `the hub refused the data channel: ${head.status}${head.reason ? ` ${head.reason}` : ''}${body ? ` (${body})` : ''}`,
        );
      else err ??= new DataChannelError('the hub closed the data channel before answering');
    }
    this.opts.onClose(err ?? new DataChannelError('the hub closed the data channel'), this.opened);
  }
}
