/**
 * The REST API under `/api`. Every route but health and model bytes needs the operator token
 * (`Authorization: Bearer <token>`). Bodies are size-bounded and validated with zod; errors are
 * JSON `{error: {code, message}}` with a fitting status.
 */
import express, { type NextFunction, type Request, type Response } from 'express';
import { createHash } from 'node:crypto';
import { createReadStream, statSync } from 'node:fs';
import { z } from 'zod';
import { LIMITS } from '../protocol/limits.ts';
import { PackError, packTensors, unpackTensors } from '../protocol/pack.ts';
import { DTYPES, type WireTensor } from '../protocol/tensor.ts';
import { JobRequirementsSchema, JsonOptionsSchema, describeZodError } from '../protocol/schemas.ts';
import { UploadManifestSchema } from '../models/manifest-schema.ts';
import type { ModelInfo } from '../protocol/model.ts';
import type { WorkerView } from '../protocol/operator.ts';
import { readOnnxSignatureFile } from '../models/onnx-signature.ts';
import { bearer, tokenMatches } from './auth.ts';
import { inputProblem } from './check.ts';
import { type Hub, HubError } from './hub.ts';
import { jobJson, jobStatus } from './job-view.ts';
import { clean } from './logger.ts';
import { RateLimiter } from './rate-limit.ts';
import { matchesFilter } from './scheduler/filter.ts';
import { writeNpy } from './io/npy.ts';
import { TarError, TarWriter } from './io/tar.ts';
import { WorkerFigures, workerJson } from './workers.ts';
import { filesRouter } from './api-files.ts';
import { discard, readItems, receiveToFile, type ReceivedFile } from './uploads.ts';
import { ocrRouter } from './pipeline-api.ts';

const InlineTensorSchema = z.strictObject({
  name: z.string().min(1).max(LIMITS.nameChars),
  dtype: z.enum(DTYPES),
  dims: z.array(z.number().int().min(0)).max(LIMITS.dimsPerTensor),
  /** base64 of the raw little-endian bytes */
  data: z.string().max(LIMITS.jsonBodyBytes * 16),
});

export const CreateJobSchema = z.strictObject({
  model: z.string().min(1).max(LIMITS.nameChars),
  priority: z.number().int().min(-100).max(100).default(0),
  redundancy: z.number().int().min(1).max(5).default(1),
  deadline: z.number().int().positive().nullable().default(null),
  requirements: JobRequirementsSchema.nullable().default(null),
  options: JsonOptionsSchema.default({}),
  /**
   * Answer items whose model and input bytes match a result stored before from the result cache
   * (done at once, reported `cached`); false runs every item.
   */
  cache: z
    .boolean()
    .default(true)
    .describe('answer items computed before (same model, same input bytes) from the result cache'),
  /** Items inline (small jobs): the job is sealed at once. Without them it stays open for uploads. */
  items: z
    .array(
      z.strictObject({
        name: z.string().min(1).max(LIMITS.nameChars).optional(),
        inputs: z.array(InlineTensorSchema).max(LIMITS.tensorsPerItem),
      }),
    )
    .min(1)
    .max(10_000)
    .optional(),
});

/**
 * Items added to a job in one store call (`POST /api/jobs/:id/items`): bytes and count. 8 MiB keeps
 * what the hub holds of an upload small and each write short, while a batch is still many items.
 */
const ITEMS_BATCH_BYTES = 8 * 1024 * 1024;
const ITEMS_BATCH_COUNT = 4096;

export const PatchJobSchema = z.strictObject({ priority: z.number().int().min(-100).max(100) });

export const WorkersQuerySchema = z.object({
  kind: z.enum(['browser', 'native']).optional(),
  backend: z.string().max(16).optional(),
  pool: z.string().max(LIMITS.nameChars).optional(),
  online: z.enum(['true', 'false']).optional(),
  minGpuMemory: z.coerce.number().min(0).optional(),
  minCores: z.coerce.number().int().min(0).optional(),
  offset: z.coerce.number().int().min(0).default(0),
  limit: z.coerce.number().int().min(1).max(1000).default(1000),
});

export const PageSchema = z.object({
  offset: z.coerce.number().int().min(0).default(0),
  limit: z.coerce.number().int().min(1).max(1000).default(100),
  state: z.enum(['pending', 'done', 'failed']).optional(),
});

function parse<T>(schema: z.ZodType<T>, value: unknown): T {
  const r = schema.safeParse(value);
  if (!r.success) throw new HubError('invalid_request', describeZodError(r.error), 400);
  return r.data;
}

function param(req: Request, name: string): string {
  const v = req.params[name];
  if (typeof v !== 'string' || v.length > LIMITS.nameChars)
    throw new HubError('invalid_request', `bad ${name}`, 400);
  return v;
}

/** Builds the `/api` router. */
export function apiRouter(
  hub: Hub,
  operatorToken: string,
  /** With several hubs: the other hubs' workers (`GET /api/workers` lists every hub's). */
  remoteWorkers?: () => Promise<WorkerView[]>,
): express.Router {
  const r = express.Router();
  const json = express.json({ limit: LIMITS.jsonBodyBytes * 16 });

  // Per address: public routes, and failed sign-ins (a wrong token is refused with 429 after a few).
  const publicHits = new RateLimiter(50, 200);
  const badTokens = new RateLimiter(10 / 60, 20);
  const limitPublic = (req: Request, _res: Response, next: NextFunction) => {
    if (!publicHits.take(req.ip ?? 'unknown'))
      throw new HubError('rate_limited', 'too many requests; slow down', 429);
    next();
  };

  r.get('/health', limitPublic, (_req, res) => {
    res.json({
      data: { ok: true, workers: [...hub.workers.values()].filter((w) => w.state !== 'offline').length },
    });
  });

  // Model bytes are public: browser contributors are anonymous and models are addressed by hash.
  r.get('/models/:sha', limitPublic, async (req, res) => {
    const sha = param(req, 'sha');
    // A model uploaded through another hub on the same store is fetched from the store first.
    const path =
      /^[0-9a-f]{64}$/.test(sha) && (await hub.models.find(sha)) ? hub.models.filePath(sha) : undefined;
    if (!path) throw new HubError('unknown_model', 'no model with that sha256', 404);
    res.setHeader('Content-Type', 'application/octet-stream');
    // A known length lets the contributor page show the download's progress.
    res.setHeader('Content-Length', String(statSync(path).size));
    res.setHeader('Cache-Control', 'public, max-age=31536000, immutable');
    res.setHeader('Cross-Origin-Resource-Policy', 'same-origin');
    createReadStream(path).pipe(res);
  });

  r.use((req, _res, next) => {
    if (!tokenMatches(bearer(req.headers.authorization), operatorToken)) {
      if (!badTokens.take(req.ip ?? 'unknown')) {
        throw new HubError(
          'rate_limited',
          'too many requests without a valid operator token; wait a minute',
          429,
        );
      }
      throw new HubError('unauthorized', 'this needs the operator token: Authorization: Bearer <token>', 401);
    }
    next();
  });

  r.get('/models', async (_req, res) => {
    await hub.models.refresh(); // with several hubs: those uploaded through the others too
    res.json({ data: { models: hub.models.list(), problems: hub.models.problems() } });
  });

  // The body goes to a temp file (server/uploads.ts), never into memory whole.
  r.post('/models', async (req, res) => {
    const what = 'ONNX file (application/octet-stream)';
    const upload = await receiveToFile(req, res, {
      dir: hub.models.incomingDir,
      limit: LIMITS.modelBytes,
      what,
    });
    try {
      res.status(201).json({ data: await registerUpload(upload, req.query) });
    } finally {
      await discard(upload);
    }
  });

  /** Reads an uploaded model's signature, builds its manifest from it and the query, registers it. */
  async function registerUpload(upload: ReceivedFile, q: Request['query']): Promise<ModelInfo> {
    let sig;
    try {
      sig = readOnnxSignatureFile(upload.path);
    } catch (err) {
      throw new HubError('invalid_model', (err as Error).message, 400);
    }
    const unsupported = [...sig.inputs, ...sig.outputs].find((v) => !v.dtype || !v.shape);
    if (unsupported)
      throw new HubError(
        'invalid_model',
        `tensor "${clean(unsupported.name, 80)}" has an unsupported type or no shape`,
        400,
      );
    const shape = (s: (number | string | null)[] | undefined) =>
      (s ?? []).map((d, i) => (d === null ? `d${i}` : d));
    const manifest = parse(UploadManifestSchema, {
      name: typeof q.name === 'string' ? q.name : '',
      description: typeof q.description === 'string' ? q.description.slice(0, 500) : 'uploaded model',
      inputs: sig.inputs.map((v) => ({ name: v.name, dtype: v.dtype, shape: shape(v.shape) })),
      outputs: sig.outputs.map((v) => ({ name: v.name, dtype: v.dtype, shape: shape(v.shape) })),
      batchable: q.batchable === 'true',
      batchSize: q.batchable === 'true' ? Number(q.batchSize ?? 8) : 1,
      tolerance: { atol: Number(q.atol ?? 1e-3), rtol: Number(q.rtol ?? 1e-2) },
      calibration: {
        dims: Object.fromEntries(
          sig.inputs.map((v) => [v.name, (v.shape ?? []).map((d) => (typeof d === 'number' ? d : 1))]),
        ),
        seed: 1,
      },
    });
    try {
      return await hub.models.addUpload(upload, manifest);
    } catch (err) {
      throw new HubError('invalid_model', (err as Error).message, 400);
    }
  }

  r.post('/jobs', json, async (req, res) => {
    const spec = parse(CreateJobSchema, req.body);
    const { items, ...rest } = spec;
    let decoded: { name: string; inputs: Uint8Array }[] = [];
    if (items) {
      const model = await hub.models.find(spec.model);
      if (!model) throw new HubError('unknown_model', `unknown model "${clean(spec.model, 80)}"`, 404);
      decoded = items.map((it, i) => {
        const tensors: WireTensor[] = it.inputs.map((t) => ({
          ...t,
          data: new Uint8Array(Buffer.from(t.data, 'base64')),
        }));
        const problem = inputProblem(model, tensors);
        if (problem) throw new HubError('invalid_item', `item ${i}: ${problem}`, 400);
        return { name: it.name ?? String(i).padStart(6, '0'), inputs: packTensors(tensors) };
      });
    }
    let job = await hub.createJob({ ...rest, state: 'open' });
    if (items) {
      await hub.appendItems(job.id, decoded);
      job = await hub.sealJob(job.id);
    }
    res.status(201).json({ data: await jobJson(hub, job) });
  });

  // Items uploads of each job in progress, so a job's uploads are added one after another (each
  // one's items stay together and in order).
  const appending = new Map<string, Promise<unknown>>();

  // The body goes to a temp file (server/uploads.ts), never into memory whole: every item is
  // checked, reading the file back one item at a time, and only then added, in batches of at most
  // ITEMS_BATCH_BYTES, in order.
  r.post('/jobs/:id/items', async (req, res) => {
    const id = param(req, 'id');
    const openJob = () => hub.requireOpenJob(id);
    const { model } = await openJob();
    let gone = false; // the client closed its connection before the answer
    res.once('close', () => (gone = !res.writableFinished));
    const upload = await receiveToFile(req, res, {
      dir: hub.models.incomingDir,
      limit: LIMITS.binaryBodyBytes,
      what: 'items (application/octet-stream, protocol/pack.ts packItems)',
    });
    const previous = appending.get(id) ?? Promise.resolve();
    const mine = previous.then(() => addItems(id, model, upload, openJob, () => gone));
    const settled = mine.catch(() => undefined).finally(() => discard(upload));
    appending.set(id, settled);
    void settled.then(() => {
      if (appending.get(id) === settled) appending.delete(id);
    });
    const added = await mine.finally(() => settled); // its temp file is gone before the answer
    res.status(201).json({ data: { added, itemCount: (await hub.requireJob(id)).itemCount } });
  });

  /**
   * Adds a received items body to an open job: each item checked first (one bad item refuses the
   * whole body, nothing added), then added in batches. A client gone while they are added stops it
   * after the batch in hand: what it finds stored (`GET /api/jobs/:id`, `items`) is then what stays,
   * and it sends again from there (`shardhub submit` does).
   */
  async function addItems(
    id: string,
    model: ModelInfo,
    upload: ReceivedFile,
    openJob: () => Promise<unknown>,
    gone: () => boolean,
  ): Promise<number> {
    try {
      for await (const it of readItems(upload)) {
        if (it.name.length > LIMITS.nameChars)
          throw new HubError('invalid_item', `item name longer than ${LIMITS.nameChars}`, 400);
        const problem = inputProblem(model, unpackTensors(it.pack));
        if (problem) throw new HubError('invalid_item', `item "${clean(it.name, 80)}": ${problem}`, 400);
      }
    } catch (err) {
      if (err instanceof PackError) throw new HubError('invalid_item', err.message, 400);
      throw err;
    }
    await openJob(); // sealed or cancelled while the body arrived, or while an earlier upload was added
    let added = 0;
    let batch: { name: string; inputs: Uint8Array }[] = [];
    let bytes = 0;
    const flush = async () => {
      try {
        added += (await hub.appendItems(id, batch)).length;
      } catch (err) {
        await openJob(); // sealed or cancelled meanwhile: that is the error to give
        throw err;
      }
      batch = [];
      bytes = 0;
    };
    for await (const it of readItems(upload)) {
      if (gone()) break;
      batch.push({ name: it.name, inputs: it.pack.slice() });
      bytes += it.pack.byteLength;
      if (bytes >= ITEMS_BATCH_BYTES || batch.length >= ITEMS_BATCH_COUNT) await flush();
    }
    if (batch.length > 0 && !gone()) await flush();
    return added;
  }

  r.use(filesRouter(hub));
  r.use(ocrRouter(hub)); // OCR pipelines (server/pipeline-api.ts)

  r.post('/jobs/:id/seal', async (req, res) => {
    res.json({ data: await jobJson(hub, await hub.sealJob(param(req, 'id'))) });
  });

  r.get('/jobs', async (req, res) => {
    const limit = parse(z.coerce.number().int().min(1).max(1000).default(100), req.query.limit);
    const jobs = await hub.jobs.list({ limit });
    res.json({ data: { jobs: await Promise.all(jobs.map((j) => jobJson(hub, j))) } });
  });

  r.get('/jobs/:id', async (req, res) => {
    res.json({ data: await jobStatus(hub, await hub.requireJob(param(req, 'id'))) });
  });

  r.patch('/jobs/:id', json, async (req, res) => {
    const patch = parse(PatchJobSchema, req.body);
    res.json({ data: await jobJson(hub, await hub.setPriority(param(req, 'id'), patch.priority)) });
  });

  r.post('/jobs/:id/cancel', async (req, res) => {
    res.json({ data: await jobJson(hub, await hub.cancelJob(param(req, 'id'))) });
  });

  r.get('/jobs/:id/fairness', async (req, res) => {
    const job = await hub.requireJob(param(req, 'id'));
    const report = await hub.fairnessOf(job.id, job.state === 'completed' || job.state === 'cancelled');
    if (!report) throw new HubError('no_fairness', `job ${job.id} has not started`, 404);
    res.json({ data: report });
  });

  r.get('/jobs/:id/events', async (req, res) => {
    const job = await hub.requireJob(param(req, 'id'));
    res.json({ data: { events: await hub.jobs.events(job.id, { limit: 1000 }) } });
  });

  r.get('/jobs/:id/items', async (req, res) => {
    const job = await hub.requireJob(param(req, 'id'));
    const page = parse(PageSchema, req.query);
    res.json({ data: { items: await hub.jobs.items(job.id, page), itemCount: job.itemCount } });
  });

  // One item's outputs: the tensor pack, or one output as .npy with ?output=NAME.
  r.get('/jobs/:id/items/:itemId/result', async (req, res) => {
    const job = await hub.requireJob(param(req, 'id'));
    const itemId = parse(z.coerce.number().int().min(1), req.params.itemId);
    const item = await hub.jobs.item(itemId);
    const result = item && item.jobId === job.id ? await hub.jobs.result(itemId) : undefined;
    if (!result) throw new HubError('no_result', `item ${itemId} of job ${job.id} has no result (yet)`, 404);
    const output = typeof req.query.output === 'string' ? req.query.output : undefined;
    res.setHeader('Content-Type', 'application/octet-stream');
    if (!output) return void res.send(Buffer.from(result.outputs));
    const t = unpackTensors(result.outputs).find((x) => x.name === output);
    if (!t) throw new HubError('no_output', `item ${itemId} has no output "${clean(output, 80)}"`, 404);
    res.send(Buffer.from(writeNpy(t)));
  });

  // All results as one tar of .npy files, streamed page by page from the store.
  r.get('/jobs/:id/results.tar', async (req, res) => {
    const job = await hub.requireJob(param(req, 'id'));
    res.setHeader('Content-Type', 'application/x-tar');
    res.setHeader('Content-Disposition', `attachment; filename="${job.id}-results.tar"`);
    // The writer waits for the client when its buffer is full, and refuses further entries once the
    // client has gone: a download abandoned midway ends here instead of waiting for a 'drain'.
    const tar = new TarWriter(res);
    try {
      for await (const r of hub.jobs.results(job.id)) {
        for (const t of unpackTensors(r.outputs)) {
          await tar.add(`results/${safeName(r.name)}/${safeName(t.name)}.npy`, writeNpy(t));
        }
      }
      await tar.finish();
    } catch (err) {
      if (err instanceof TarError && res.destroyed) return;
      throw err;
    }
  });

  // The hubs sharing this hub's store and their leases (several hubs on PostgreSQL; one on SQLite).
  r.get('/hubs', async (_req, res) => {
    const hubs = await hub.hubs();
    res.json({
      data: {
        hubs: hubs.map((h) => ({
          ...h,
          expiresAt: Number.isFinite(h.expiresAt) ? h.expiresAt : null,
        })),
        store: hub.storeKind,
        now: Date.now(),
      },
    });
  });

  r.get('/workers', async (req, res) => {
    const q = parse(WorkersQuerySchema, req.query);
    if (remoteWorkers) {
      const figures = WorkerFigures.of(hub);
      const all = [
        ...[...hub.workers.values()].map((w) => ({
          ...workerJson(w, figures),
          probation: hub.probationOf(w.id),
          hub: hub.hubId,
        })),
        ...(await remoteWorkers()),
      ].filter(
        (w) =>
          (!q.kind || w.kind === q.kind) &&
          (!q.backend || w.backend === q.backend) &&
          (q.pool === undefined || w.pool === q.pool) &&
          (q.minCores === undefined || w.cores >= q.minCores) &&
          (q.minGpuMemory === undefined || (w.gpuMemoryBytes ?? 0) >= q.minGpuMemory) &&
          (q.online === undefined || w.online === (q.online === 'true')),
      );
      const page = all.slice(q.offset, q.offset + q.limit);
      const next = q.offset + page.length < all.length ? q.offset + page.length : null;
      return void res.json({ data: { workers: page, total: all.length, offset: q.offset, next } });
    }
    const filter = {
      kind: q.kind,
      backend: q.backend,
      pool: q.pool,
      minCores: q.minCores,
      minGpuMemoryBytes: q.minGpuMemory,
    };
    const live = [...hub.workers.values()].filter(
      (w) =>
        matchesFilter(w, filter) &&
        (q.online === undefined || (w.state !== 'offline') === (q.online === 'true')),
    );
    // Pages: the answer stays bounded however many workers have come and gone.
    const page = live.slice(q.offset, q.offset + q.limit);
    const figures = WorkerFigures.of(hub);
    const next = q.offset + page.length < live.length ? q.offset + page.length : null;
    res.json({
      data: {
        workers: page.map((w) => ({ ...workerJson(w, figures), probation: hub.probationOf(w.id) })),
        total: live.length,
        offset: q.offset,
        next,
      },
    });
  });

  // Removes an offline worker from the hub's list (the dashboard's Remove). Its history stays in
  // the store; if it connects again, it is listed again.
  r.delete('/workers/:id', (req, res) => {
    const id = param(req, 'id');
    const w = hub.workers.get(id);
    if (!w) throw new HubError('unknown_worker', 'no such worker', 404);
    if (w.state !== 'offline')
      throw new HubError(
        'worker_online',
        `${clean(w.name, 80)} is connected: evict it first, then remove it`,
        409,
      );
    hub.forgetWorker(id);
    res.json({ data: { removed: id } });
  });

  r.post('/workers/:id/:action', (req, res) => {
    const action = parse(z.enum(['pause', 'resume', 'drain', 'evict']), req.params.action);
    res.json({ data: workerJson(hub.controlWorker(param(req, 'id'), action)) });
  });

  r.use((_req, _res) => {
    throw new HubError('not_found', 'no such API route', 404);
  });

  r.use((err: unknown, _req: Request, res: Response, _next: NextFunction) => {
    void _next;
    if (err instanceof HubError)
      return void res.status(err.status).json({ error: { code: err.code, message: err.message } });
    const e = err as { type?: string; status?: number; message?: string };
    if (e.type === 'entity.too.large')
      return void res.status(413).json({ error: { code: 'too_large', message: 'request body too large' } });
    if (e.type === 'entity.parse.failed')
      return void res
        .status(400)
        .json({ error: { code: 'invalid_json', message: 'request body is not valid JSON' } });
    if (typeof e.status === 'number' && e.status >= 400 && e.status < 500) {
      return void res
        .status(e.status)
        .json({ error: { code: 'bad_request', message: clean(e.message ?? 'bad request') } });
    }
    hub.log.error({ err }, 'API error');
    res.status(500).json({ error: { code: 'internal', message: 'internal error' } });
  });
  return r;
}

/**
 * Item and output names as they may appear in archive paths: no separators, no dot-dot, at most 60
 * characters. A name that had to change ends in a hash of the whole original name: two names that
 * differ only in what was replaced (`a b`, `a_b`) or cut off (`scan-0001…`, `scan-0002…`) would
 * otherwise land on one path and overwrite each other when extracted. Names already safe stay as
 * they are.
 */
function safeName(s: string): string {
  const cleaned = s.replace(/[^A-Za-z0-9._-]/g, '_').replace(/^\.+/, '_');
  if (cleaned === s && cleaned.length > 0 && cleaned.length <= 60) return cleaned;
  return `${cleaned.slice(0, 51)}-${createHash('sha256').update(s).digest('hex').slice(0, 8)}`;
}
