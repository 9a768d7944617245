/**
 * The Socket.IO protocol between the hub and its workers, typed once and imported by every side.
 *
 * Namespace `/worker`. The handshake carries `auth: WorkerAuth`. Requests that need an answer use
 * acks typed `Response<T>`; event names are `domain:verb`. Tensors ride as binary attachments.
 * Types are not validation: the hub checks every payload against `schemas.ts` before use.
 *
 * What workers send has a schema, and its type here is derived from it (`z.infer`), so the two
 * cannot disagree; what only the hub sends (`shard:assign`, revocations, notices) is written here
 * once. Everything is imported as types only: the pages and workers that use this file bundle no zod.
 */
import type { WorkerView } from './operator.ts';
import type { z } from 'zod';
import type { ModelInfo } from './model.ts';
import type {
  BACKENDS,
  BenchmarkReplySchema,
  CapabilitiesSchema,
  ErrorBodySchema,
  FAILURE_CATEGORIES,
  HeartbeatSchema,
  ItemsDoneSchema,
  ItemsFailedSchema,
  ItemsReleaseSchema,
  PackedResultsSchema,
  RegisterRequestSchema,
  RevokeReplySchema,
  WORKER_KINDS,
  WorkerAuthSchema,
} from './schemas.ts';
import type { WireTensor } from './tensor.ts';

/** An ack reply: data, or an error with a stable code and a message for people. */
export type Response<T> = { error: ErrorBody } | { data: T };
/** A serialized error as it crosses a process boundary. */
export type ErrorBody = z.infer<typeof ErrorBodySchema>;
/** An ack callback. */
export type Ack<T> = (res: Response<T>) => void;

/** `browser` or `native`. */
export type WorkerKind = (typeof WORKER_KINDS)[number];
/** The backend a worker runs on. */
export type Backend = (typeof BACKENDS)[number];
/** Why an item's run failed; the hub retries elsewhere and reports these per item. */
export type FailureCategory = (typeof FAILURE_CATEGORIES)[number];

/**
 * The version of this protocol. A worker sends it in its handshake; a hub that speaks another one
 * refuses the connection (`ErrorCode.Version`) instead of misreading its messages.
 */
export const PROTOCOL_VERSION = 1;

/** Sent in the Socket.IO handshake. The id and secret make a reconnecting worker the same worker. */
export type WorkerAuth = z.infer<typeof WorkerAuthSchema>;

/** What a worker says about its machine. */
export type Capabilities = z.infer<typeof CapabilitiesSchema>;

/** `worker:register` request. */
export type RegisterRequest = z.infer<typeof RegisterRequestSchema>;
/** `worker:register` reply. */
export interface RegisterReply {
  workerId: string;
  heartbeatMs: number;
  offlineAfterMs: number;
  /** The hub takes results whose outputs come packed (`ItemsDone.packed`). */
  packed?: boolean;
  /** To a native node that asked for a data channel: where to open it, and its one-use ticket. */
  dataChannel?: { path: string; ticket: string };
}

/**
 * Tensors of many items in one binary attachment: item `i`'s tensor pack (protocol/pack.ts) is
 * `data[ends[i - 1] ?? 0 .. ends[i])`. Socket.IO sends every attachment as a WebSocket frame (and
 * a socket write) of its own; per tensor, that framing cost the hub and the workers more than small
 * items themselves.
 */
export interface PackedTensors {
  ids: number[];
  ends: number[];
  data: Uint8Array;
}

/** `worker:heartbeat` payload: load figures. */
export type Heartbeat = z.infer<typeof HeartbeatSchema>;

/**
 * A shard's inputs as one attachment per item: `parts[i]` is item `ids[i]`'s tensor pack, as the
 * hub stored it, with no copy to join them (`PackedTensors` costs the hub a copy of every input,
 * and a sixth of its CPU on PaddleOCR's 1.2 MB items). For workers that registered `packedParts`.
 */
export interface PackedParts {
  ids: number[];
  parts: Uint8Array[];
}

/** One item inside a shard. */
export interface AssignedItem {
  id: number;
  inputs: WireTensor[];
}
/** `shard:assign`: a run of a job's items for one worker. */
export interface ShardAssign {
  shardId: string;
  jobId: string;
  model: ModelInfo;
  /** Empty when the inputs come in `packed` (workers that registered with `packed: true`). */
  items: AssignedItem[];
  packed?: PackedTensors | PackedParts;
}

/** `benchmark:run` request and reply. */
export interface BenchmarkRequest {
  model: ModelInfo;
}
/** `benchmark:run` reply: the worker's speed on the model. */
export type BenchmarkReply = z.infer<typeof BenchmarkReplySchema>;

/** `shard:revoke`: the hub asks for unstarted items back (steal, pause, job cancelled). */
export interface RevokeRequest {
  itemIds: number[];
}
/** `shard:revoke` reply: the items given back. */
export type RevokeReply = z.infer<typeof RevokeReplySchema>;

/** `items:cancel`: stop or skip these items; their results are no longer wanted. */
export interface CancelNotice {
  itemIds: number[];
  reason: string;
}

/** `worker:control`: operator actions on a worker. */
export interface ControlNotice {
  action: 'pause' | 'resume' | 'drain';
}

/** `items:done`: results, each item's outputs as tensors or packed. */
export type ItemsDone = z.infer<typeof ItemsDoneSchema>;
/** Results of one job and model with their outputs packed; `ms[i]` goes with `ids[i]`. */
export type PackedResults = z.infer<typeof PackedResultsSchema>;
/**
 * One result in `items:done`; on the hub, also one of packed results once unpacked, with `pack`,
 * the outputs' tensor pack as it arrived, which the hub stores as is.
 */
export type ItemResult = ItemsDone['results'][number] & { pack?: Uint8Array };
export interface ItemsDoneReply {
  accepted: number[];
  /** Already complete or no longer assigned: acknowledged and dropped. */
  dropped: number[];
  /** Refused with a reason (wrong model hash, bad shape...). */
  refused: { itemId: number; reason: string }[];
}

/** `items:failed`: items whose runs failed. */
export type ItemsFailed = z.infer<typeof ItemsFailedSchema>;
/** One failure in `items:failed`. */
export type ItemFailure = ItemsFailed['failures'][number];

/** `items:release`: hand unstarted items back (pause, drain). */
export type ItemsRelease = z.infer<typeof ItemsReleaseSchema>;

/** `worker:figures`: this worker's part in the jobs it works on (for the contributor page). */
export interface WorkerFigures {
  jobs: {
    jobId: string;
    model: string;
    /** Items in the job. */
    items: number;
    /** Items of the job done by anyone. */
    done: number;
    /** The job's items whose accepted result is this worker's (never more than `items`). */
    doneHere: number;
    /** This worker's weight over the weights of the job's workers (its fair share), 0..1. */
    weightShare?: number;
    /** Items of the job not yet handed to any worker. */
    queued?: number;
  }[];
  /** Probation: this worker's results wait for a second opinion; absent once it is proven. */
  probation?: {
    confirmed: number;
    needed: number;
    awaitingCheck: number;
    maxItems: number;
  };
}

/** Events between hubs (Socket.IO's server-side events): none, a hub runs alone. */
export interface InterHubEvents {
  /** Several hubs (through the Postgres adapter): each answers with its own workers. */
  'hub:workers': (ack: (workers: WorkerView[]) => void) => void;
  /** Several hubs: results of a pipeline stage's items stored on the sending hub (for the run's hub). */
  'hub:committed': (jobId: string, itemIds: number[]) => void;
  /** Several hubs: the sender made work claimable (a job sealed, chunks given back...): claim now. */
  'hub:claimable': () => void;
  /** Several hubs: the sender reaped a hub whose lease lapsed: its chunks and pipeline runs are free. */
  'hub:gone': () => void;
  /** Several hubs: the sender has dashboards connected: publish dashboard updates for a while. */
  'hub:watching': () => void;
}

/** Events the hub sends to a worker. */
export interface HubToWorkerEvents {
  'shard:assign': (shard: ShardAssign) => void;
  'shard:revoke': (req: RevokeRequest, ack: Ack<RevokeReply>) => void;
  'benchmark:run': (req: BenchmarkRequest, ack: Ack<BenchmarkReply>) => void;
  'items:cancel': (notice: CancelNotice) => void;
  'worker:control': (notice: ControlNotice) => void;
  'worker:figures': (figures: WorkerFigures) => void;
}

/** Events a worker sends to the hub. */
export interface WorkerToHubEvents {
  'worker:register': (req: RegisterRequest, ack: Ack<RegisterReply>) => void;
  'worker:heartbeat': (hb: Heartbeat) => void;
  'items:done': (msg: ItemsDone, ack: Ack<ItemsDoneReply>) => void;
  'items:failed': (msg: ItemsFailed, ack: Ack<{ retried: number; failed: number }>) => void;
  'items:release': (msg: ItemsRelease, ack: Ack<{ released: number }>) => void;
}
