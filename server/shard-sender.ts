/**
 * How assigned items reach a worker: `shard:assign` messages of bounded size, planned from the sizes
 * of their items' inputs and sent in order, each one's inputs read from the store only as it goes.
 *
 * - A message holds at most {@link SHARD_MESSAGE_ITEMS} items and {@link SHARD_MESSAGE_BYTES} of
 *   inputs (a single larger item goes alone). Planning reads the sizes (SQLite `length()`), and the
 *   inputs themselves only of items up to {@link PART_MIN_BYTES}: the hub records every assignment
 *   row in one transaction before large inputs are read, and small ones are read once.
 * - Up to {@link SHARD_MESSAGE_BYTES} go out per turn of the event loop, the rest in later turns: a
 *   job of large items reaches a worker a message at a time, and the worker starts on the first
 *   while the rest are read (PaddleOCR, 2 s of work at once: its first item started after about
 *   130 ms when all 150 MB were read first). Small items all go at once.
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
import type { Store } from './store/store.ts';
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

/** A message planned by {@link ShardSender.plan}: its inputs are read when it goes out. */
interface Outgoing {
  workerId: string;
  socket: WorkerSocket;
  jobId: string;
  shardId: string;
  ids: number[];
  /** Its items' input bytes. */
  bytes: number;
  /** Its items' input packs when planning read them all (small items), else read as it goes. */
  packs: Uint8Array[] | undefined;
}

/** What {@link ShardSender} asks of the hub. */
export interface ShardSenderHost {
  store: Store;
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
  private flushQueued = false;
  private closed = false;
  /**
   * Shard ids: this hub process's random prefix and a counter. They are labels (the assignments
   * table, logs), not secrets; a `randomBytes` call per shard cost 1% of the hub's CPU with 2,000
   * workers.
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
   * Plans the messages of one worker's assignment of a job's items and adds their rows to `rows`,
   * which the caller records (in one transaction for many plans) before {@link flush}.
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
      const sized = this.host.store.itemInputsUpTo(ids, PART_MIN_BYTES);
      let batch: number[] = [];
      let bytes = 0;
      const cut = () => {
        const shardId = `s_${this.idPrefix}-${(++this.shardCount).toString(36)}`;
        for (const itemId of batch) rows.push({ itemId, workerId, shardId, at });
        const packs = batch.map((id) => sized.get(id)?.pack);
        const read = packs.every((p) => p) ? (packs as Uint8Array[]) : undefined;
        this.outgoing.push({ workerId, socket, jobId, shardId, ids: batch, bytes, packs: read });
        batch = [];
        bytes = 0;
      };
      for (const id of ids) {
        const size = sized.get(id)?.bytes ?? 0;
        if (batch.length > 0 && bytes + size > SHARD_MESSAGE_BYTES) cut();
        batch.push(id);
        bytes += size;
      }
      if (batch.length > 0) cut();
    }
  }

  /** Sends planned messages in order, {@link SHARD_MESSAGE_BYTES} per turn of the event loop. */
  flush(): void {
    if (this.flushQueued) return;
    let spent = 0;
    while (this.outgoing.length > 0 && spent < SHARD_MESSAGE_BYTES && !this.closed) {
      const o = this.outgoing.shift() as Outgoing;
      if (this.host.socketOf(o.workerId) !== o.socket) continue;
      const model = this.host.modelOf(o.jobId);
      if (!model) continue;
      this.emit(o, model);
      spent += Math.max(o.bytes, 1);
    }
    if (this.outgoing.length > 0 && !this.closed) {
      this.flushQueued = true;
      setImmediate(() => {
        this.flushQueued = false;
        this.flush();
      });
    }
  }

  /** Sends nothing more (the hub is closing). */
  close(): void {
    this.closed = true;
    this.outgoing.length = 0;
  }

  /** Emits a planned message in the worker's form, reading its inputs if planning did not. */
  private emit(o: Outgoing, model: ModelInfo): void {
    const packs = o.packs ?? this.read(o.ids);
    const head = { shardId: o.shardId, jobId: o.jobId, model };
    const packing = this.packing.get(o.workerId);
    const large = o.bytes >= PART_MIN_BYTES * o.ids.length;
    const channel = large ? this.host.data?.of(o.workerId, o.socket.id) : undefined;
    if (channel) {
      this.host.data?.send(channel, head, o.ids, packs);
    } else if (packing === 'parts' && large) {
      o.socket.emit('shard:assign', { ...head, items: [], packed: { ids: o.ids, parts: packs } });
    } else if (packing) {
      let end = 0;
      const ends = packs.map((p) => (end += p.byteLength));
      o.socket.emit('shard:assign', {
        ...head,
        items: [],
        packed: { ids: o.ids, ends, data: Buffer.concat(packs) },
      });
    } else {
      // Unpacked: each message within the receiver's limit on attachments, one per tensor.
      let items: ShardAssign['items'] = [];
      let tensors = 0;
      o.ids.forEach((id, i) => {
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
  private read(ids: number[]): Uint8Array[] {
    const inputs = this.host.store.itemInputs(ids);
    return ids.map((id) => inputs.get(id) as Uint8Array);
  }
}
