/**
 * The Socket.IO protocol between the hub and its workers, typed once and imported by every side.
 *
 * Namespace `/worker`. The handshake carries `auth: WorkerAuth`. Requests that need an answer use
 * acks typed `Response<T>`; event names are `domain:verb`. Tensors ride as binary attachments.
 * Types are not validation: the hub checks every payload against `schemas.ts` before use.
 */
import type { ModelInfo } from './model.ts';
import type { WireTensor } from './tensor.ts';

/** An ack reply: data, or an error with a stable code and a message for people. */
export type Response<T> = { error: ErrorBody } | { data: T };
/** A serialized error as it crosses a process boundary. */
export interface ErrorBody {
  code: string;
  message: string;
}
/** An ack callback. */
export type Ack<T> = (res: Response<T>) => void;

export const WORKER_KINDS = ['browser', 'native'] as const;
export type WorkerKind = (typeof WORKER_KINDS)[number];
export const BACKENDS = ['webgpu', 'wasm', 'cuda', 'cpu', 'sim'] as const;
export type Backend = (typeof BACKENDS)[number];
export const FAILURE_CATEGORIES = [
  'model_load',
  'out_of_memory',
  'device_lost',
  'timeout',
  'invalid_output',
  'other',
] as const;
/** Why an item's run failed; the hub retries elsewhere and reports these per item. */
export type FailureCategory = (typeof FAILURE_CATEGORIES)[number];

/**
 * The version of this protocol. A worker sends it in its handshake; a hub that speaks another one
 * refuses the connection (`ErrorCode.Version`) instead of misreading its messages.
 */
export const PROTOCOL_VERSION = 1;

/** Sent in the Socket.IO handshake. The id and secret make a reconnecting worker the same worker. */
export interface WorkerAuth {
  /** Join token (native nodes; optional contributor token for browsers). */
  token?: string;
  workerId: string;
  /** Chosen by the worker on first start; the hub keeps only its hash and checks it on reconnect. */
  workerSecret: string;
  /** {@link PROTOCOL_VERSION} of the worker (absent: taken to be the hub's own). */
  protocol?: number;
}

/** What a worker says about its machine. */
export interface Capabilities {
  hostname?: string;
  cores: number;
  memoryBytes: number;
  ortVersion?: string;
  userAgent?: string;
  gpu?: {
    name: string;
    vendor?: string;
    architecture?: string;
    /** The GPU driver (native WebGPU nodes). */
    driver?: string;
    /** A software adapter (SwiftShader, llvmpipe): no GPU behind it. */
    software?: boolean;
    memoryBytes?: number;
    features?: string[];
    limits?: Record<string, number>;
  };
  /** Why this backend was chosen (e.g. "CUDA provider not installed; using cpu"). */
  backendReason?: string;
}

/** `worker:register` request. */
export interface RegisterRequest {
  kind: WorkerKind;
  backend: Backend;
  name: string;
  pool?: string;
  concurrency: number;
  capabilities: Capabilities;
  /** The worker takes shards whose inputs come packed (`ShardAssign.packed`). */
  packed?: boolean;
  /** It also takes them as one attachment per item (`PackedParts`). */
  packedParts?: boolean;
  /**
   * It takes large items' inputs over a data channel (native nodes of `http:` hubs only; see
   * `protocol/data-channel.ts`).
   */
  dataChannel?: boolean;
}
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
export interface Heartbeat {
  load: {
    /** 1-minute load average divided by cores (browsers: 0). */
    cpu: number;
    memUsedBytes: number;
    memTotalBytes: number;
    gpuMemUsedBytes?: number;
  };
  queued: number;
  running: number;
  paused: boolean;
}

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
export interface BenchmarkReply {
  /** Items per second at the model's batch size, all of this worker's sessions together. */
  itemsPerSec: number;
  batchSize: number;
  runs: number;
  ms: number;
}

/** `shard:revoke`: the hub asks for unstarted items back (steal, pause, job cancelled). */
export interface RevokeRequest {
  itemIds: number[];
}
export interface RevokeReply {
  /** The items the worker removed before starting them; only these may go elsewhere. */
  revoked: number[];
}

/** `items:cancel`: stop or skip these items; their results are no longer wanted. */
export interface CancelNotice {
  itemIds: number[];
  reason: string;
}

/** `worker:control`: operator actions on a worker. */
export interface ControlNotice {
  action: 'pause' | 'resume' | 'drain';
}

/** One result in `items:done`. */
export interface ItemResult {
  itemId: number;
  jobId: string;
  /** sha256 of the model bytes that produced it. */
  modelSha256: string;
  ms: number;
  outputs: WireTensor[];
  /** Hub side: the outputs' tensor pack as it arrived (packed results), stored as is. */
  pack?: Uint8Array;
}
/** Results of one job and model with their outputs packed; `ms[i]` goes with `ids[i]`. */
export interface PackedResults extends PackedTensors {
  jobId: string;
  modelSha256: string;
  ms: number[];
}
export interface ItemsDone {
  results: ItemResult[];
  /** Results with packed outputs, to hubs whose register reply said `packed: true`. */
  packed?: PackedResults[];
}
export interface ItemsDoneReply {
  accepted: number[];
  /** Already complete or no longer assigned: acknowledged and dropped. */
  dropped: number[];
  /** Refused with a reason (wrong model hash, bad shape...). */
  refused: { itemId: number; reason: string }[];
}

/** One failure in `items:failed`. */
export interface ItemFailure {
  itemId: number;
  jobId: string;
  category: FailureCategory;
  message: string;
}
export interface ItemsFailed {
  failures: ItemFailure[];
}

/** `items:release`: hand unstarted items back (pause, drain). */
export interface ItemsRelease {
  itemIds: number[];
}

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
