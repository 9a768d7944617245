/**
 * Runtime schemas (zod) for every payload the hub receives. A payload that fails its schema gets an
 * error reply naming the first problem; it never reaches the hub's logic.
 *
 * They are also the one definition of those payloads' types: `events.ts` and `operator.ts` derive
 * theirs from these with `z.infer`, through type-only imports, so the pages and workers that import
 * those types do not bundle zod. A type that must stay hand-written (`WireTensor`, which the pages
 * use without zod) is checked against its schema at compile time at the end of this file.
 */
import { z } from 'zod';
import { LIMITS } from './limits.ts';
import { DTYPES, type WireTensor } from './tensor.ts';

/** The kinds of worker. */
export const WORKER_KINDS = ['browser', 'native'] as const;
/** The backends a worker may run on. */
export const BACKENDS = ['webgpu', 'wasm', 'cuda', 'cpu', 'sim'] as const;
/** Why an item's run failed; the hub retries elsewhere and reports these per item. */
export const FAILURE_CATEGORIES = [
  'model_load',
  'out_of_memory',
  'device_lost',
  'timeout',
  'invalid_output',
  'other',
] as const;

const name = z.string().min(1).max(LIMITS.nameChars);
const text = z.string().max(LIMITS.textChars);
const count = z.number().int().min(0);
const itemId = z.number().int().min(1);
const bytes = z.number().finite().min(0);
const sha256 = z.string().regex(/^[0-9a-f]{64}$/);
/**
 * Binary data. `z.instanceof(Uint8Array)` would type it `Uint8Array<ArrayBuffer>`, which a Node
 * Buffer's view (`Uint8Array<ArrayBufferLike>`) is not: the types derived from these schemas must
 * take the bytes that senders hold.
 */
const binary = z.custom<Uint8Array>((v) => v instanceof Uint8Array, { message: 'expected binary data' });

/** A tensor's dims: at most `LIMITS.dimsPerTensor`, each an integer in 0..2^31. */
export const DimsSchema = z
  .array(
    z
      .number()
      .int()
      .min(0)
      .max(2 ** 31),
  )
  .max(LIMITS.dimsPerTensor);

export const WireTensorSchema = z.object({
  name,
  dtype: z.enum(DTYPES),
  dims: DimsSchema,
  data: binary.refine((d) => d.byteLength <= LIMITS.tensorBytes, 'tensor too large'),
});

/** Whether `v` is a plain object of at most `max` keys (counted before anything else is looked at). */
function smallObject(v: unknown, max: number): v is Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return false;
  let n = 0;
  for (const k in v) if (Object.hasOwn(v, k) && ++n > max) return false;
  return true;
}

/**
 * A map of at most `LIMITS.mapKeys` keys of at most 64 characters to finite numbers. The key count
 * is checked first: a record schema alone would walk 200,000 keys before any bound applies.
 */
export const NumberMapSchema = z.custom<Record<string, number>>(
  (v) =>
    smallObject(v, LIMITS.mapKeys) &&
    Object.entries(v).every(([k, x]) => k.length <= 64 && typeof x === 'number' && Number.isFinite(x)),
  { message: `at most ${LIMITS.mapKeys} keys of at most 64 characters, each a finite number` },
);

/**
 * Says why free-form JSON (a job's options) breaks the bounds, or undefined: at most
 * `LIMITS.jsonDepth` deep, `LIMITS.mapKeys` keys or elements per level, `LIMITS.jsonBytes` of
 * strings and keys in all. Walked with an explicit stack, never by recursion: a value nested
 * thousands deep must be refused, not overflow the stack (the hub answered 500 to one).
 */
export function jsonProblem(value: unknown): string | undefined {
  const stack: { v: unknown; depth: number }[] = [{ v: value, depth: 0 }];
  let bytes = 0;
  while (stack.length) {
    const { v, depth } = stack.pop() as { v: unknown; depth: number };
    if (typeof v === 'string') bytes += v.length;
    else if (typeof v === 'number' || typeof v === 'boolean' || v === null) bytes += 8;
    else if (typeof v === 'object') {
      if (depth >= LIMITS.jsonDepth) return `nested more than ${LIMITS.jsonDepth} deep`;
      const entries = Array.isArray(v) ? v.map((x, i) => [String(i), x] as const) : Object.entries(v);
      if (entries.length > LIMITS.mapKeys) return `more than ${LIMITS.mapKeys} keys or elements in one place`;
      for (const [k, x] of entries) {
        bytes += k.length;
        stack.push({ v: x, depth: depth + 1 });
      }
    } else return `holds a ${typeof v}, which JSON has not`;
    if (bytes > LIMITS.jsonBytes) return `larger than ${LIMITS.jsonBytes} bytes`;
  }
  return undefined;
}

/** A job's free-form options: a JSON object within the bounds of `jsonProblem`. */
export const JsonOptionsSchema = z
  .custom<Record<string, unknown>>((v) => smallObject(v, LIMITS.mapKeys), {
    message: `an object of at most ${LIMITS.mapKeys} keys`,
  })
  .superRefine((v, ctx) => {
    const problem = jsonProblem(v);
    if (problem) ctx.addIssue({ code: 'custom', message: problem });
  });

/** The Socket.IO handshake's `auth`. The id and secret make a reconnecting worker the same worker. */
export const WorkerAuthSchema = z.object({
  /** Join token (native nodes; optional contributor token for browsers). */
  token: z.string().max(256).optional(),
  workerId: z.string().regex(/^[A-Za-z0-9_-]{8,64}$/, 'workerId must be 8-64 characters of [A-Za-z0-9_-]'),
  /** Chosen by the worker on first start; the hub keeps only its hash and checks it on reconnect. */
  workerSecret: z.string().min(16).max(128),
  protocol: z.number().int().min(1).max(1_000_000).optional(),
});

/** What a worker says about its machine. */
export const CapabilitiesSchema = z.object({
  hostname: z.string().max(LIMITS.nameChars).optional(),
  cores: z.number().int().min(0).max(4096),
  memoryBytes: bytes,
  ortVersion: z.string().max(64).optional(),
  userAgent: z.string().max(512).optional(),
  gpu: z
    .object({
      name: z.string().max(LIMITS.nameChars),
      vendor: z.string().max(LIMITS.nameChars).optional(),
      architecture: z.string().max(LIMITS.nameChars).optional(),
      /** The GPU driver (native WebGPU nodes). */
      driver: z.string().max(LIMITS.nameChars).optional(),
      /** A software adapter (SwiftShader, llvmpipe): no GPU behind it. */
      software: z.boolean().optional(),
      memoryBytes: bytes.optional(),
      features: z.array(z.string().max(64)).max(64).optional(),
      limits: NumberMapSchema.optional(),
    })
    .optional(),
  /** Why this backend was chosen (e.g. "CUDA provider not installed; using cpu"). */
  backendReason: text.optional(),
});

/** `worker:register` request. */
export const RegisterRequestSchema = z.object({
  kind: z.enum(WORKER_KINDS),
  backend: z.enum(BACKENDS),
  name,
  pool: name.optional(),
  concurrency: z.number().int().min(1).max(256),
  capabilities: CapabilitiesSchema,
  /** The worker takes shards whose inputs come packed (`ShardAssign.packed`). */
  packed: z.boolean().optional(),
  /** It also takes them as one attachment per item (`PackedParts`). */
  packedParts: z.boolean().optional(),
  /**
   * It takes large items' inputs over a data channel (native nodes of `http:` hubs only; see
   * `protocol/data-channel.ts`).
   */
  dataChannel: z.boolean().optional(),
});

/** `worker:heartbeat` payload: load figures. */
export const HeartbeatSchema = z.object({
  load: z.object({
    /** 1-minute load average divided by cores (browsers: 0). */
    cpu: z.number().finite().min(0).max(1e6),
    memUsedBytes: bytes,
    memTotalBytes: bytes,
    gpuMemUsedBytes: bytes.optional(),
  }),
  queued: count,
  running: count,
  paused: z.boolean(),
});

/** Whether `ends` cut `data` into `ids.length` consecutive, non-empty-or-empty, in-bounds slices. */
function packedFits(p: { ids: unknown[]; ends: number[]; data: Uint8Array }): boolean {
  if (p.ends.length !== p.ids.length) return false;
  let prev = 0;
  for (const e of p.ends) {
    if (e < prev) return false;
    prev = e;
  }
  return prev === p.data.byteLength;
}

/**
 * Results of one job and model with their outputs packed (`PackedTensors`' layout): item `ids[i]`
 * took `ms[i]`, and its outputs' tensor pack is `data[ends[i - 1] ?? 0 .. ends[i])`.
 */
export const PackedResultsSchema = z
  .object({
    jobId: name,
    modelSha256: sha256,
    ids: z.array(itemId).max(LIMITS.itemsPerMessage),
    ms: z.array(z.number().finite().min(0)).max(LIMITS.itemsPerMessage),
    ends: z.array(z.number().int().min(0)).max(LIMITS.itemsPerMessage),
    data: binary.refine((d) => d.byteLength <= LIMITS.socketMessageBytes, 'packed outputs too large'),
  })
  .refine((p) => p.ms.length === p.ids.length && packedFits(p), {
    message: 'ids, ms and ends must have one entry per item, ends ascending to the end of data',
  });

/** One result in `items:done`. */
const ResultSchema = z.object({
  itemId,
  jobId: name,
  /** sha256 of the model bytes that produced it. */
  modelSha256: sha256,
  ms: z.number().finite().min(0),
  outputs: z.array(WireTensorSchema).max(LIMITS.tensorsPerItem),
});

/** `items:done`: results, each item's outputs as tensors or packed. */
export const ItemsDoneSchema = z
  .object({
    results: z.array(ResultSchema).max(LIMITS.itemsPerMessage),
    /** Results with packed outputs, to hubs whose register reply said `packed: true`. */
    packed: z.array(PackedResultsSchema).max(LIMITS.itemsPerMessage).optional(),
  })
  .refine(
    (m) => {
      const n = m.results.length + (m.packed ?? []).reduce((k, p) => k + p.ids.length, 0);
      return n >= 1 && n <= LIMITS.itemsPerMessage;
    },
    { path: ['results'], message: `between 1 and ${LIMITS.itemsPerMessage} results per message` },
  );

/** One failure in `items:failed`. */
const ItemFailureSchema = z.object({
  itemId,
  jobId: name,
  category: z.enum(FAILURE_CATEGORIES),
  message: text,
});

/** `items:failed`: items whose runs failed. */
export const ItemsFailedSchema = z.object({
  failures: z.array(ItemFailureSchema).min(1).max(LIMITS.itemsPerMessage),
});

/** `items:release`: unstarted items handed back (pause, drain). */
export const ItemsReleaseSchema = z.object({
  itemIds: z.array(itemId).max(LIMITS.itemsPerMessage * 16),
});

/** Says what is wrong with a payload in one line, from a zod error. */
export function describeZodError(err: z.ZodError): string {
  const issue = err.issues[0];
  if (!issue) return 'invalid payload';
  const path = issue.path.length ? issue.path.join('.') : '(root)';
  return `${path}: ${issue.message}`;
}

/** Replies workers send to the hub's requests (acks are payloads too: checked like the rest). */
export const BenchmarkReplySchema = z.object({
  /** Items per second at the model's batch size, all of this worker's sessions together. */
  itemsPerSec: z.number().finite().min(0),
  batchSize: z.number().int().min(1),
  runs: count,
  ms: z.number().finite().min(0),
});

export const RevokeReplySchema = z.object({
  /** The items the worker removed before starting them; only these may go elsewhere. */
  revoked: z.array(itemId).max(LIMITS.itemsPerMessage * 16),
});

/** A serialized error as it crosses a process boundary: a stable code and a message for people. */
export const ErrorBodySchema = z.object({
  code: z.string().max(64),
  message: z.string().max(LIMITS.textChars),
});

/** An ack reply: `{data}` checked against `data`'s schema, or `{error}`. */
export function responseSchema<T>(data: z.ZodType<T>) {
  return z.union([z.object({ data }), z.object({ error: ErrorBodySchema })]);
}

// ---- the /operator namespace and the REST API (protocol/operator.ts) ----------------------------

/** Which workers a job may run on (every field set must match). */
export const JobRequirementsSchema = z.strictObject({
  kind: z.enum(WORKER_KINDS).optional(),
  backend: z.string().max(16).optional(),
  pool: z.string().max(LIMITS.nameChars).optional(),
  minGpuMemoryBytes: z.number().min(0).optional(),
  minCores: z.number().int().min(0).optional(),
});

/** `job:watch` request: the job whose fairness report a client wants pushed (null: none). */
export const WatchRequestSchema = z.strictObject({
  jobId: z.string().min(1).max(LIMITS.nameChars).nullable(),
});

// ---- hand-written types checked against their schemas -------------------------------------------

/** True when `A` and `B` are the same type (not merely assignable one way). */
type Same<A, B> = (<T>() => T extends A ? 1 : 2) extends <T>() => T extends B ? 1 : 2 ? true : false;
/** Compiles only when given `true`. */
type Assert<T extends true> = T;

/**
 * Compile-time checks: `tsc` fails here when a hand-written type and its schema disagree.
 * `WireTensor` stays in `tensor.ts`, which the pages and workers import without zod.
 */
export type SchemaChecks = [Assert<Same<z.infer<typeof WireTensorSchema>, WireTensor>>];
