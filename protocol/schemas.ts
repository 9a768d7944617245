/**
 * Runtime schemas (zod) for every payload the hub receives. A payload that fails its schema gets an
 * error reply naming the first problem; it never reaches the hub's logic.
 */
import { z } from 'zod';
import { LIMITS } from './limits.ts';
import { BACKENDS, FAILURE_CATEGORIES, WORKER_KINDS } from './events.ts';
import { DTYPES } from './tensor.ts';

const name = z.string().min(1).max(LIMITS.nameChars);
const text = z.string().max(LIMITS.textChars);
const count = z.number().int().min(0);
const itemId = z.number().int().min(1);
const bytes = z.number().finite().min(0);

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
  data: z.instanceof(Uint8Array).refine((d) => d.byteLength <= LIMITS.tensorBytes, 'tensor too large'),
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

export const WorkerAuthSchema = z.object({
  token: z.string().max(256).optional(),
  workerId: z.string().regex(/^[A-Za-z0-9_-]{8,64}$/, 'workerId must be 8-64 characters of [A-Za-z0-9_-]'),
  workerSecret: z.string().min(16).max(128),
  protocol: z.number().int().min(1).max(1_000_000).optional(),
});

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
      driver: z.string().max(LIMITS.nameChars).optional(),
      software: z.boolean().optional(),
      memoryBytes: bytes.optional(),
      features: z.array(z.string().max(64)).max(64).optional(),
      limits: NumberMapSchema.optional(),
    })
    .optional(),
  backendReason: text.optional(),
});

export const RegisterRequestSchema = z.object({
  kind: z.enum(WORKER_KINDS),
  backend: z.enum(BACKENDS),
  name,
  pool: name.optional(),
  concurrency: z.number().int().min(1).max(256),
  capabilities: CapabilitiesSchema,
  packed: z.boolean().optional(),
  packedParts: z.boolean().optional(),
  dataChannel: z.boolean().optional(),
});

export const HeartbeatSchema = z.object({
  load: z.object({
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

export const PackedResultsSchema = z
  .object({
    jobId: name,
    modelSha256: z.string().regex(/^[0-9a-f]{64}$/),
    ids: z.array(itemId).max(LIMITS.itemsPerMessage),
    ms: z.array(z.number().finite().min(0)).max(LIMITS.itemsPerMessage),
    ends: z.array(z.number().int().min(0)).max(LIMITS.itemsPerMessage),
    data: z
      .instanceof(Uint8Array)
      .refine((d) => d.byteLength <= LIMITS.socketMessageBytes, 'packed outputs too large'),
  })
  .refine((p) => p.ms.length === p.ids.length && packedFits(p), {
    message: 'ids, ms and ends must have one entry per item, ends ascending to the end of data',
  });

const ResultSchema = z.object({
  itemId,
  jobId: name,
  modelSha256: z.string().regex(/^[0-9a-f]{64}$/),
  ms: z.number().finite().min(0),
  outputs: z.array(WireTensorSchema).max(LIMITS.tensorsPerItem),
});

export const ItemsDoneSchema = z
  .object({
    results: z.array(ResultSchema).max(LIMITS.itemsPerMessage),
    packed: z.array(PackedResultsSchema).max(LIMITS.itemsPerMessage).optional(),
  })
  .refine(
    (m) => {
      const n = m.results.length + (m.packed ?? []).reduce((k, p) => k + p.ids.length, 0);
      return n >= 1 && n <= LIMITS.itemsPerMessage;
    },
    { path: ['results'], message: `between 1 and ${LIMITS.itemsPerMessage} results per message` },
  );

export const ItemsFailedSchema = z.object({
  failures: z
    .array(z.object({ itemId, jobId: name, category: z.enum(FAILURE_CATEGORIES), message: text }))
    .min(1)
    .max(LIMITS.itemsPerMessage),
});

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
  itemsPerSec: z.number().finite().min(0),
  batchSize: z.number().int().min(1),
  runs: count,
  ms: z.number().finite().min(0),
});

export const RevokeReplySchema = z.object({
  revoked: z.array(itemId).max(LIMITS.itemsPerMessage * 16),
});

/** An ack reply: `{data}` checked against `data`'s schema, or `{error}`. */
export function responseSchema<T>(data: z.ZodType<T>) {
  return z.union([
    z.object({ data }),
    z.object({ error: z.object({ code: z.string().max(64), message: z.string().max(LIMITS.textChars) }) }),
  ]);
}
