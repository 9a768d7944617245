/**
 * How assigned items reach a worker: `shard:assign` messages of bounded size, planned from the sizes
 * of their items' inputs and sent in order, each one's inputs read from the store only as it goes.
 *
 * - Planning is synchronous: an assignment becomes shards of at most {@link SHARD_MESSAGE_ITEMS}
 *   items, each with an id, whose rows the hub records at once. Sending reads, shard by shard, the
 *   inputs' sizes (`length()`) and the inputs themselves of items up to {@link PART_MIN_BYTES}
 *   from the store, and cuts the shard into messages of at most {@link SHARD_MESSAGE_BYTES} (a
 *   single larger item goes alone); larger inputs are read message by message.
 * - Up to {@link SHARD_MESSAGE_BYTES} go out per turn of the event loop, the rest in later turns: a
 *   job of large items reaches a worker a message at a time, and the worker starts on the first
 *   while the rest are read, rather than after all of them were. Small items all go at once.
 * - A message whose worker has gone (its items were requeued) or whose job has ended is dropped.
 * - Inputs go as the tensor packs the store holds, in the form the worker registered for: one
 *   attachment per item (`PackedParts`), joined into one with offsets (`PackedTensors`), or one
 *   attachment per tensor (workers that take no packs). Large items (at least
 *   {@link PART_MIN_BYTES} each, on average) of a native node with an open data channel go down
 *   that channel instead (`server/data-channel.ts`).
 */
import { randomBytes } from 'node:crypto';
import type { Socket } from 'socket.io';
import type {
  HubToWorkerEvents,
  RegisterRequest,
  ShardAssign,
  WorkerToHubEvents,
} from '../protocol/events.ts';
import type { ModelInfo } from '../protocol/model.ts';
import { unpackTensors } from '../protocol/pack.ts';
import { MAX_ATTACHMENTS } from '../protocol/socket-parser.ts';
import type { AsyncStore, SizedInputs } from './store/async-store.ts';
import type { DataChannels } from './data-channel.ts';

/** A worker's socket as the hub types it. */
export type WorkerSocket = Socket<WorkerToHubEvents, HubToWorkerEvents>;

/** Most items in one `shard:assign` message. */
export const SHARD_MESSAGE_ITEMS = 2048;

/**
 * Most input bytes in one `shard:assign` message, and per turn of the event loop: small enough
 * that a worker starts on its first message while the rest are read, and that no message is a
 * huge fresh buffer on the worker's side; large enough that items of about 1 MB (PaddleOCR) do
 * not go one per message, which costs the worker more per item.
 */
export const SHARD_MESSAGE_BYTES = 4 * 1024 * 1024;

/**
 * Items at least this large (on average in a message) go to workers that take them as one
 * attachment each; smaller ones are joined into one: an attachment is a WebSocket frame of its own,
 * whose cost on both sides outweighs the copy for small items, while joining megabyte items costs
 * the hub a copy of each.
 */
export const PART_MIN_BYTES = 64 * 1024;

/** An assignment row: which worker holds an item, under which shard, since when. */
export interface AssignmentRow {
  itemId: number;
  workerId: string;
  shardId: string;
  at: number;
}

/** A shard planned by {@link ShardSender.plan}: its inputs are read when it goes out. */
interface Outgoing {
  workerId: string;
  socket: WorkerSocket;
  jobId: string;
  shardId: string;
  ids: number[];
}

/** One message of a shard: its items, their input bytes, and their packs when read already. */
interface Message {
  ids: number[];
  bytes: number;
  packs: Uint8Array[] | undefined;
}

/** What {@link ShardSender} asks of the hub. */
export interface ShardSenderHost {
  store: Pick<AsyncStore, 'itemInputs' | 'itemInputsUpTo'>;
  /** A failed read of inputs (the items stay held; the worker's watchdog or a requeue frees them). */
  failed?(err: unknown, workerId: string, jobId: string): void;
  /** The worker's current socket, if it is connected. */
  socketOf(workerId: string): WorkerSocket | undefined;
  /** The model of an active job; undefined once the job has ended. */
  modelOf(jobId: string): ModelInfo | undefined;
  /** Native nodes' data channels, which take large items' inputs instead of their sockets. */
  data?: Pick<DataChannels, 'of' | 'send'>;
}

/** Plans and sends `shard:assign` messages; see the file comment. */
export class ShardSender {
  private readonly outgoing: Outgoing[] = [];
  private sending = false;
  private closed = false;
  /**
   * Shard ids: this hub process's random prefix and a counter. They are labels (the assignments
   * table, logs), not secrets: a `randomBytes` call per shard would cost the hub's hot path for
   * nothing.
   */
  private readonly idPrefix = randomBytes(6).toString('hex');
  private shardCount = 0;
  /** How each connected worker takes packed inputs (absent: one attachment per tensor). */
  private readonly packing = new Map<string, 'joined' | 'parts'>();

  constructor(private readonly host: ShardSenderHost) {}

  /** Notes the input form a worker registered for. */
  registered(workerId: string, req: Pick<RegisterRequest, 'packed' | 'packedParts'>): void {
    if (req.packed) this.packing.set(workerId, req.packedParts ? 'parts' : 'joined');
    else this.packing.delete(workerId);
  }

  /** Forgets a worker that has gone (its next registration says again). */
  gone(workerId: string): void {
    this.packing.delete(workerId);
  }

  /**
   * Plans the shards of one worker's assignment of a job's items and adds their rows to `rows`,
   * which the caller records (in one write for many plans) before {@link flush}.
   */
  plan(
    workerId: string,
    socket: WorkerSocket,
    jobId: string,
    itemIds: number[],
    at: number,
    rows: AssignmentRow[],
  ): void {
    for (let off = 0; off < itemIds.length; off += SHARD_MESSAGE_ITEMS) {
      const ids = itemIds.slice(off, off + SHARD_MESSAGE_ITEMS);
      const shardId = `s_${this.idPrefix}-${(++this.shardCount).toString(36)}`;
      for (const itemId of ids) rows.push({ itemId, workerId, shardId, at });
      this.outgoing.push({ workerId, socket, jobId, shardId, ids });
    }
  }

  /**
   * Sends planned shards in order, {@link SHARD_MESSAGE_BYTES} per turn of the event loop. One
   * sender at a time: a flush while one runs leaves the new shards to it.
   */
  flush(): void {
    if (this.sending || this.outgoing.length === 0) return;
    this.sending = true;
    void this.sendAll().finally(() => (this.sending = false));
  }

  private async sendAll(): Promise<void> {
    let spent = 0;
    while (this.outgoing.length > 0 && !this.closed) {
      // The shards planned by now are read together (up to a shard's worth of items): a store
      // that answers slower than the hub plans gets fewer, larger reads.
      const batch: Outgoing[] = [];
      let ids = 0;
      while (
        this.outgoing.length > 0 &&
        (ids === 0 || ids + this.outgoing[0].ids.length <= SHARD_MESSAGE_ITEMS)
      ) {
        const o = this.outgoing.shift() as Outgoing;
        if (!this.live(o)) continue;
        batch.push(o);
        ids += o.ids.length;
      }
      if (batch.length === 0) continue;
      let sized: Map<number, SizedInputs>;
      try {
        sized = await this.host.store.itemInputsUpTo(
          batch.length === 1 ? batch[0].ids : batch.flatMap((o) => o.ids),
          PART_MIN_BYTES,
        );
      } catch (err) {
        for (const o of batch) this.host.failed?.(err, o.workerId, o.jobId);
        continue;
      }
      for (const o of batch) {
        try {
          for (const m of this.cut(o.ids, sized)) {
            const packs = m.packs ?? (await this.read(m.ids));
            const model = this.live(o);
            if (!model) break;
            this.emit(o, m, packs, model);
            spent += Math.max(m.bytes, 1);
            if (spent >= SHARD_MESSAGE_BYTES) {
              spent = 0;
              await new Promise<void>((resolve) => setImmediate(resolve));
            }
          }
        } catch (err) {
          this.host.failed?.(err, o.workerId, o.jobId);
        }
      }
    }
  }

  /** The shard's model while its worker is still on that socket and its job still active. */
  private live(o: Outgoing): ModelInfo | undefined {
    if (this.closed || this.host.socketOf(o.workerId) !== o.socket) return undefined;
    return this.host.modelOf(o.jobId);
  }

  /** Cuts a shard into messages of at most {@link SHARD_MESSAGE_BYTES} (a larger item alone). */
  private cut(ids: number[], sized: Map<number, SizedInputs>): Message[] {
    const out: Message[] = [];
    let batch: number[] = [];
    let bytes = 0;
    const close = () => {
      const packs = batch.map((id) => sized.get(id)?.pack);
      out.push({ ids: batch, bytes, packs: packs.every((p) => p) ? (packs as Uint8Array[]) : undefined });
      batch = [];
      bytes = 0;
    };
    for (const id of ids) {
      const size = sized.get(id)?.bytes ?? 0;
      if (batch.length > 0 && bytes + size > SHARD_MESSAGE_BYTES) close();
      batch.push(id);
      bytes += size;
    }
    if (batch.length > 0) close();
    return out;
  }

  /** Sends nothing more (the hub is closing). */
  close(): void {
    this.closed = true;
    this.outgoing.length = 0;
  }

  /** Emits one message of a shard in the worker's form. */
  private emit(o: Outgoing, m: Message, packs: Uint8Array[], model: ModelInfo): void {
    const head = { shardId: o.shardId, jobId: o.jobId, model };
    const packing = this.packing.get(o.workerId);
    const large = m.bytes >= PART_MIN_BYTES * m.ids.length;
    const channel = large ? this.host.data?.of(o.workerId, o.socket.id) : undefined;
    if (channel) {
      this.host.data?.send(channel, head, m.ids, packs);
    } else if (packing === 'parts' && large) {
      o.socket.emit('shard:assign', { ...head, items: [], packed: { ids: m.ids, parts: packs } });
    } else if (packing) {
      let end = 0;
      const ends = packs.map((p) => (end += p.byteLength));
      o.socket.emit('shard:assign', {
        ...head,
        items: [],
        packed: { ids: m.ids, ends, data: Buffer.concat(packs) },
      });
    } else {
      // Unpacked: each message within the receiver's limit on attachments, one per tensor.
      let items: ShardAssign['items'] = [];
      let tensors = 0;
      m.ids.forEach((id, i) => {
        const t = unpackTensors(packs[i] as Uint8Array);
        if (items.length > 0 && tensors + t.length > MAX_ATTACHMENTS) {
          o.socket.emit('shard:assign', { ...head, items });
          items = [];
          tensors = 0;
        }
        items.push({ id, inputs: t });
        tensors += t.length;
      });
      o.socket.emit('shard:assign', { ...head, items });
    }
  }

  /** Items' input packs, in the order of `ids`. */
  private async read(ids: number[]): Promise<Uint8Array[]> {
    const inputs = await this.host.store.itemInputs(ids);
    return ids.map((id) => inputs.get(id) as Uint8Array);
  }
}
