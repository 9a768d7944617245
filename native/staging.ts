/**
 * Staging: a native node copies each item's inputs, the moment its shard arrives, into the batch
 * buffer its session thread will later run on, and the run loop's batch then goes to the thread as
 * it is (transferred, no copy at run time).
 *
 * Why at arrival: an item waits in the node's queue for the hub's prefetch (a job's first shard
 * holds up to two seconds of work). Left in the socket's message buffer all that time, its inputs
 * would keep that buffer alive long enough for V8 to move it to its old generation, where only a
 * full collection frees it, and megabyte buffers freed that way set one off every few dozen items
 * (a pause on the thread that also reads the socket). Staged, the message buffer dies young; the
 * batch buffers are reused, so the node's heap does not grow by an item's size per item. The copy
 * is the one the batch's concatenation would make anyway, made earlier.
 *
 * A staging buffer holds up to the model's batch size of same-shaped items, laid out as the batch
 * (each input's items one after another, 8-byte aligned). The run loop takes items in the order
 * they came, so a batch it takes is usually one staging buffer's items, in order: then
 * {@link Stager.claim} hands that buffer over. Anything else (an item revoked out of the middle,
 * items of two shards' buffers in one batch) finds no claim, and the session copies the batch as
 * before. A buffer whose items ran by copy is left to the collector; a claimed one comes back from
 * the thread and is kept, up to {@link Stager.keepBytes}, for the next items.
 */
import { totalmem } from 'node:os';
import type { ModelInfo } from '../protocol/model.ts';
import { byteLengthOf, type WireTensor } from '../protocol/tensor.ts';
import { batchKey } from '../worker/batching.ts';
import { systemClock, type Clock } from '../worker/clock.ts';
import { align8, type BufferTensor } from './ort-threaded.ts';

/** What staging needs of a model. */
type StagedModel = Pick<ModelInfo, 'sha256' | 'batchable' | 'batchSize'>;

/** Where one input's items sit in a staging buffer. */
interface Region {
  name: string;
  dtype: WireTensor['dtype'];
  /** One item's dims. */
  dims: number[];
  offset: number;
  /** One item's bytes. */
  itemBytes: number;
}

/** A staging buffer and the items written into it so far. */
interface Staged {
  key: string;
  buffer: ArrayBuffer;
  regions: Region[];
  capacity: number;
  count: number;
  /** Handed to a session by {@link Stager.claim}: nothing more is written into it. */
  claimed: boolean;
}

/** Stages items' inputs into batch buffers and hands those over whole; see the file comment. */
export class Stager {
  /** The buffer still taking items, per model and input shapes. */
  private readonly open = new Map<string, Staged>();
  /** Each staged tensor's bytes (the view handed out) → its buffer and position in it. */
  private readonly where = new WeakMap<Uint8Array, { staged: Staged; pos: number }>();
  private readonly free: ArrayBuffer[] = [];
  private freeBytes = 0;
  /** Drops the kept buffers once none has come back for {@link idleMs}. */
  private cancelIdle: (() => void) | undefined;

  /**
   * `keepBytes`: most bytes of returned buffers kept for reuse. A job's first shard to a node holds
   * up to two seconds of its work (the scheduler's `maxShardSeconds`), and all of it is staged: a
   * pool smaller than that meant fresh buffers, whose pages the kernel faults in one by one as the
   * socket fills them, at every job's start. The default is 512 MiB or an eighth of the machine's
   * memory, whichever is less.
   * `idleMs`: kept buffers are released when none has come back for that long (the node is idle).
   * `maxBufferBytes`: a staging buffer holds fewer items than the model's batch size when that many
   * would take more (at least one item): a buffer is allocated whole when its first item arrives,
   * and a model with a batch size of 32 and 10 MB inputs must not cost 320 MB for a job of two
   * items. Batches of such items span buffers, and run by copy.
   * `clock`: time for the idle wait (tests drive one by hand).
   */
  constructor(
    readonly keepBytes = Math.min(512 * 2 ** 20, Math.floor(totalmem() / 8)),
    readonly maxBufferBytes = 32 * 2 ** 20,
    readonly idleMs = 30_000,
    private readonly clock: Clock = systemClock,
  ) {}

  /**
   * Copies one item's inputs into the staging buffer for its model and shapes, and returns them as
   * views of it. Inputs that cannot be batched (a scalar, no inputs) come back as they are.
   */
  stage(model: StagedModel, inputs: WireTensor[]): WireTensor[] {
    const staged = this.reserve(model, inputs);
    if (!staged) return inputs;
    staged.forEach((t, j) => t.data.set((inputs[j] as WireTensor).data));
    return staged;
  }

  /**
   * Places for one item's inputs, of these names, dtypes and dims, in the staging buffer for its
   * model and shapes, for the caller to fill (the data channel reads sockets into them); undefined
   * for inputs that cannot be batched. Like {@link stage} without the copy.
   */
  reserve(model: StagedModel, inputs: readonly Omit<WireTensor, 'data'>[]): WireTensor[] | undefined {
    const shapes = batchKey(inputs);
    if (shapes === undefined) return undefined;
    const key = `${model.sha256}|${shapes}`;
    let staged = this.open.get(key);
    if (!staged) {
      const batch = model.batchable ? Math.max(1, Math.floor(model.batchSize)) : 1;
      let itemBytes = 0;
      for (const t of inputs) itemBytes += align8(byteLengthOf(t.dtype, t.dims));
      const capacity = Math.max(1, Math.min(batch, Math.floor(this.maxBufferBytes / Math.max(1, itemBytes))));
      staged = this.allocate(key, inputs, capacity);
      this.open.set(key, staged);
    }
    const s = staged;
    const pos = s.count++;
    if (s.count === s.capacity) this.open.delete(key);
    return inputs.map((t, j) => {
      const r = s.regions[j] as Region;
      const data = new Uint8Array(s.buffer, r.offset + pos * r.itemBytes, r.itemBytes);
      this.where.set(data, { staged: s, pos });
      return { name: t.name, dtype: t.dtype, dims: [...t.dims], data };
    });
  }

  /**
   * When `items` are all the items of one staging buffer, in the order they were staged: that
   * buffer, now the caller's (to transfer to a session thread), and the batch's layout in it.
   */
  claim(
    items: readonly (readonly WireTensor[])[],
  ): { buffer: ArrayBuffer; batch: BufferTensor[] } | undefined {
    const first = items[0]?.[0];
    const s = first && this.where.get(first.data)?.staged;
    if (!s || s.claimed || s.count !== items.length) return undefined;
    for (let i = 0; i < items.length; i++) {
      const inputs = items[i] as readonly WireTensor[];
      if (inputs.length !== s.regions.length) return undefined;
      for (const t of inputs) {
        const at = this.where.get(t.data);
        if (at?.staged !== s || at.pos !== i) return undefined;
      }
    }
    s.claimed = true;
    if (this.open.get(s.key) === s) this.open.delete(s.key);
    const n = s.count;
    const batch = s.regions.map((r) => ({
      name: r.name,
      dtype: r.dtype,
      dims: n === 1 ? [...r.dims] : [(r.dims[0] as number) * n, ...r.dims.slice(1)],
      offset: r.offset,
      byteLength: r.itemBytes * n,
    }));
    return { buffer: s.buffer, batch };
  }

  /** A claimed buffer back from its run: kept for later items (up to {@link keepBytes}). */
  give(buffer: ArrayBuffer): void {
    if (buffer.byteLength === 0 || this.freeBytes + buffer.byteLength > this.keepBytes) return;
    this.free.push(buffer);
    this.freeBytes += buffer.byteLength;
    // Each buffer given back restarts the wait.
    this.cancelIdle?.();
    this.cancelIdle = this.clock.after(this.idleMs, () => this.release(), { unref: true });
  }

  /** Lets go of every kept buffer (the node went idle). */
  release(): void {
    this.cancelIdle?.();
    this.cancelIdle = undefined;
    this.free.length = 0;
    this.freeBytes = 0;
  }

  /** Bytes of buffers kept for reuse (for tests and figures). */
  get keptBytes(): number {
    return this.freeBytes;
  }

  private allocate(key: string, inputs: readonly Omit<WireTensor, 'data'>[], capacity: number): Staged {
    let bytes = 0;
    const regions = inputs.map((t) => {
      const r: Region = {
        name: t.name,
        dtype: t.dtype,
        dims: [...t.dims],
        offset: bytes,
        itemBytes: byteLengthOf(t.dtype, t.dims),
      };
      bytes += align8(r.itemBytes * capacity);
      return r;
    });
    // A kept buffer that fits and is not much larger; else a new one.
    const i = this.free.findIndex((b) => b.byteLength >= bytes && b.byteLength <= 2 * bytes);
    let buffer: ArrayBuffer;
    if (i >= 0) {
      buffer = this.free.splice(i, 1)[0] as ArrayBuffer;
      this.freeBytes -= buffer.byteLength;
    } else {
      buffer = new ArrayBuffer(Math.max(8, bytes));
    }
    return { key, buffer, regions, capacity, count: 0, claimed: false };
  }
}
