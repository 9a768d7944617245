/**
 * Operator commands that talk to a hub's REST API: `submit`, `jobs`, `workers`.
 *
 * `submit` lists and checks its inputs before it creates the job, prints the job's id as soon as it
 * exists, and cancels the job if the upload fails (a bad item, Ctrl-C, the hub gone for longer than
 * the upload's retries), so a failed submit leaves no open job behind. A connection dropped during
 * the upload is retried with backoff, and the upload goes on from the items the hub has
 * (`ResumableUpload`). Progress shows from the first second (uploading, then running, then
 * downloading) on the bars of `cli-progress.ts`. While it waits, a dropped connection is retried
 * with backoff and the job is picked up again where it is; `jobs --wait ID --out DIR` re-attaches to
 * any job later.
 */
import type { Command } from 'commander';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { ModelInfo } from '../protocol/model.ts';
import { packItems, tensorBytes, type NamedItem } from '../protocol/pack.ts';
import { listInputs, readInputsFolder } from './io/inputs.ts';
import { readTar } from './io/tar.ts';
import { formatBytes, formatDuration, Progress } from './cli-progress.ts';
import {
  addOptions,
  CliError,
  EXIT,
  invokedAs,
  readValues,
  UsageError,
  type CliIo,
  type OptionTable,
  type OptionValues,
  OPERATOR_CONNECTION,
} from './options.ts';

const CONN = OPERATOR_CONNECTION;

/** The hub could not be reached (after retries where the caller retries): exit 4. */
class Unreachable extends CliError {
  constructor(
    hub: string,
    /** Why, in a word: `ECONNREFUSED`, `HTTP 503`. */
    readonly why: string,
  ) {
    super(`cannot reach the hub at ${hub} (${why}); is it running? Check --hub`, EXIT.unreachable);
  }
}

const sleep = (ms: number) => new Promise((ok) => setTimeout(ok, ms));

/** Waits `ms`, or until `signal` aborts (then throws its reason). */
function pause(ms: number, signal: AbortSignal): Promise<void> {
  signal.throwIfAborted();
  return new Promise((ok, fail) => {
    const onAbort = () => {
      clearTimeout(timer);
      fail(signal.reason);
    };
    const timer = setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      ok();
    }, ms);
    signal.addEventListener('abort', onAbort, { once: true });
  });
}

/** Statuses a proxy or a restarting hub answers with for a moment: retried like a dropped connection. */
const TRANSIENT_STATUS = new Set([502, 503, 504]);

/** A minimal REST client with clear errors. */
class Api {
  constructor(
    readonly hub: string,
    private readonly token: string,
  ) {}

  async call<T>(method: string, path: string, body?: unknown, raw?: Uint8Array): Promise<T> {
    const res = await this.request(method, path, {
      headers: raw
        ? { 'Content-Type': 'application/octet-stream' }
        : body !== undefined
          ? { 'Content-Type': 'application/json' }
          : {},
      body: raw ? raw.slice() : body !== undefined ? JSON.stringify(body) : undefined,
    });
    let json: { data?: T; error?: { message: string } };
    try {
      json = (await res.json()) as typeof json;
    } catch (err) {
      // A reply cut off on its way is a dropped connection, even after a good status line.
      if (res.ok) throw new Unreachable(this.hub, `the reply was cut off: ${causeOf(err)}`);
      json = {};
    }
    if (TRANSIENT_STATUS.has(res.status) && !json.error)
      throw new Unreachable(this.hub, `HTTP ${res.status}`);
    if (!res.ok || json.error) throw refusal(res.status, json.error?.message);
    return json.data as T;
  }

  /**
   * An idempotent call (a GET, a cancel) retried while the hub cannot be reached, with backoff from
   * 0.5 s to 5 s, for up to `forMs`; `onRetry` hears of each failure.
   */
  async retried<T>(
    method: string,
    path: string,
    forMs: number,
    onRetry: (err: Unreachable, attempt: number) => void = () => undefined,
  ): Promise<T> {
    const until = Date.now() + forMs;
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.call<T>(method, path);
      } catch (err) {
        if (!(err instanceof Unreachable) || Date.now() >= until) throw err;
        onRetry(err, attempt);
        await sleep(Math.min(5000, 500 * 2 ** Math.min(attempt - 1, 4)));
      }
    }
  }

  /** A GET whose body is read as a stream (large downloads). */
  async stream(path: string): Promise<AsyncIterable<Uint8Array>> {
    const res = await this.request('GET', path, { headers: {} });
    if (!res.ok || !res.body) {
      const json = (await res.json().catch(() => ({}))) as { error?: { message: string } };
      throw refusal(res.status, json.error?.message);
    }
    return res.body as unknown as AsyncIterable<Uint8Array>;
  }

  /** `fetch` with the operator token; a hub that cannot be reached is an {@link Unreachable}. */
  private async request(
    method: string,
    path: string,
    init: { headers: Record<string, string>; body?: BodyInit },
  ): Promise<globalThis.Response> {
    try {
      return await fetch(new URL(path, this.hub).toString(), {
        method,
        headers: { Authorization: `Bearer ${this.token}`, ...init.headers },
        body: init.body,
      });
    } catch (err) {
      throw new Unreachable(this.hub, causeOf(err));
    }
  }
}

/** A failed `fetch`'s reason in a word (`ECONNREFUSED`, `other side closed`). */
function causeOf(err: unknown): string {
  const cause = (err as Error & { cause?: { code?: string; message?: string } }).cause;
  return cause?.code ?? cause?.message ?? (err as Error).message;
}

/** The error for a refused request: the hub's own message, and a word on the token for a 401. */
function refusal(status: number, message: string | undefined): CliError {
  const why = message ?? `HTTP ${status}`;
  return new CliError(status === 401 ? `the hub refused the operator token (${why})` : why);
}

/** `30m`, `2h`, `1d`, `90s` from now, or an ISO date and time: epoch ms. */
export function parseDeadline(text: string, now = Date.now()): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)\s*$/i.exec(text);
  if (m) {
    const unit = { s: 1e3, m: 60e3, h: 3600e3, d: 86400e3 }[(m[2] as string).toLowerCase() as 's'];
    return Math.round(now + Number(m[1]) * unit);
  }
  const t = Date.parse(text);
  if (!Number.isFinite(t))
    throw new UsageError(
      `--deadline must be a duration (30m, 2h, 1d) or a date (2026-12-24T18:00), got "${text}"`,
    );
  if (t <= now) throw new UsageError(`--deadline ${text} is in the past`);
  return t;
}

// ---------------------------------------------------------------------------------- results folder

/** What `--out` may do when it already holds results. */
type OutMode = 'new' | 'resume' | 'overwrite';

/** The job whose results a folder holds (its job.json), if any. */
function jobOfFolder(out: string): string | undefined {
  try {
    return (JSON.parse(readFileSync(join(out, 'job.json'), 'utf8')) as { id?: string }).id;
  } catch {
    return undefined;
  }
}

/**
 * Checks `--out` before anything is written: a folder that holds other results (another job's, or
 * anything but this job's) is refused unless asked to resume or overwrite. With `overwrite`, the
 * results there (job.json and item folders of .npy files) are removed; other files are kept.
 */
export function prepareOut(out: string, jobId: string | undefined, mode: OutMode): void {
  if (!existsSync(out)) return;
  if (!statSync(out).isDirectory()) throw new UsageError(`--out ${out} is a file; give a folder`);
  const entries = readdirSync(out).filter((e) => !e.startsWith('.'));
  if (entries.length === 0) return;
  const holder = jobOfFolder(out);
  if (jobId !== undefined && holder === jobId) return; // this job's own results: carry on
  if (mode === 'new') {
    throw new UsageError(
      `--out ${out} already holds ${holder ? `the results of job ${holder}` : `${entries.length} other file(s)`}; pass --resume to add to them, --overwrite to replace them, or choose another --out`,
    );
  }
  if (mode === 'overwrite') {
    for (const e of entries) {
      const p = join(out, e);
      const isResults =
        e === 'job.json' || (statSync(p).isDirectory() && readdirSync(p).every((f) => f.endsWith('.npy')));
      if (isResults) rmSync(p, { recursive: true, force: true });
    }
  }
}

// ---------------------------------------------------------------------------------- submit

const REQUIREMENTS: OptionTable = {
  kind: {
    type: 'choice',
    choices: ['browser', 'native'],
    help: 'run only on workers of this kind',
    group: 'Requirements (which workers may run the job):',
  },
  backend: {
    type: 'string',
    help: 'run only on this backend (webgpu, wasm, cuda, cpu, ...)',
    group: 'Requirements (which workers may run the job):',
  },
  pool: {
    type: 'string',
    help: 'run only on nodes of this pool',
    arg: 'NAME',
    group: 'Requirements (which workers may run the job):',
  },
  'min-gpu-memory': {
    type: 'size',
    help: 'run only on workers with this much GPU memory (8GB, 512MiB)',
    min: 0,
    group: 'Requirements (which workers may run the job):',
  },
  'min-cores': {
    type: 'int',
    help: 'run only on workers with this many cores',
    min: 0,
    group: 'Requirements (which workers may run the job):',
  },
};

const SUBMIT_OPTIONS: OptionTable = {
  ...CONN,
  model: { type: 'string', help: 'model name or sha256', required: true, arg: 'NAME' },
  inputs: {
    type: 'dir',
    help: 'folder of .npy files, <item>/<input>.npy folders, or images',
    required: true,
  },
  out: {
    type: 'string',
    help: 'where results are written (<out>/<item>/<output>.npy)',
    default: 'results',
    arg: 'DIR',
  },
  priority: { type: 'int', help: 'job priority, higher first', default: 0, min: -100, max: 100 },
  deadline: {
    type: 'string',
    help: 'finish by: a duration (30m, 2h) or a date; raises priority as it nears',
    arg: 'WHEN',
  },
  redundancy: {
    type: 'int',
    help: 'run each item on this many workers and compare',
    default: 1,
    min: 1,
    max: 5,
  },
  ...REQUIREMENTS,
  cache: {
    type: 'boolean',
    help: "answer items computed before (same model, same inputs) from the hub's result cache",
    default: true,
    negatable: true,
  },
  wait: {
    type: 'boolean',
    help: 'wait for the job and download its results',
    default: true,
    negatable: true,
  },
  overwrite: { type: 'boolean', help: 'replace results already in --out', default: false },
  'retry-for': {
    type: 'int',
    help: 'seconds to keep retrying while the hub cannot be reached',
    default: 300,
    min: 0,
    arg: 'S',
  },
};

/** The job's `requirements` from the filter options, or null when none is given. */
function requirements(v: OptionValues): Record<string, unknown> | null {
  const r: Record<string, unknown> = {};
  if (v.kind !== undefined) r.kind = v.kind;
  if (v.backend !== undefined) r.backend = v.backend;
  if (v.pool !== undefined) r.pool = v.pool;
  if (v['min-gpu-memory'] !== undefined) r.minGpuMemoryBytes = v['min-gpu-memory'];
  if (v['min-cores'] !== undefined) r.minCores = v['min-cores'];
  return Object.keys(r).length ? r : null;
}

interface JobStatus {
  id: string;
  state: string;
  items: number;
  done: number;
  failed: number;
  itemsPerSec: number;
  etaS: number | null;
  elapsedS?: number;
  failedItems?: { name: string; reasons: { message: string }[] }[];
}

/** Ctrl-C as a promise-friendly flag: the first press is noted; the command decides what it means. */
function interrupts(): { readonly signal: AbortSignal; dispose(): void } {
  const ac = new AbortController();
  const on = () => ac.abort(new CliError('interrupted', EXIT.interrupted));
  process.on('SIGINT', on);
  process.on('SIGTERM', on);
  return {
    signal: ac.signal,
    dispose: () => {
      process.off('SIGINT', on);
      process.off('SIGTERM', on);
    },
  };
}

/**
 * How long an interrupted upload goes on trying: the pauses before each of its retries (1 + 2 + 4 +
 * 8 + 15 s, about half a minute: a hub restarting or a proxy failing over is back by then).
 */
export const UPLOAD_RETRY_PAUSES_MS: readonly number[] = [1000, 2000, 4000, 8000, 15_000];

/**
 * A job's upload that survives a dropped connection: a chunk whose request fails with the hub
 * unreachable is tried again after a pause ({@link UPLOAD_RETRY_PAUSES_MS}), and each retry first
 * asks the hub how many items the job has. The hub stores a chunk in one transaction, so its count
 * is the items of whole chunks: the chunk is sent again from the first item the hub lacks, and not
 * at all if the hub stored it before the connection dropped. Each item is stored exactly once.
 */
class ResumableUpload {
  /** Items the hub has stored for the job (known from its replies). */
  private stored = 0;

  constructor(
    private readonly api: Api,
    private readonly jobId: string,
    private readonly total: number,
    private readonly signal: AbortSignal,
    private readonly say: (line: string) => void,
  ) {}

  private get path(): string {
    return `/api/jobs/${encodeURIComponent(this.jobId)}`;
  }

  /** Sends one chunk of items, the next ones in order. */
  async send(chunk: NamedItem[]): Promise<void> {
    const base = this.stored;
    let skip = 0; // the chunk's items the hub already has
    await this.retrying(`item ${base + 1} of ${this.total}`, async (retry) => {
      if (retry) {
        skip = (await this.openJob()).items - base;
        if (skip < 0 || skip > chunk.length)
          throw new CliError(
            `job ${this.jobId} has ${base + skip} items on the hub, but ${base} to ${base + chunk.length} were sent; its upload cannot go on`,
          );
        this.say(
          skip === chunk.length
            ? `upload resumed: the hub had stored items ${base + 1}-${base + skip} before the connection dropped`
            : `upload resumed at item ${base + skip + 1} of ${this.total} (the hub has ${base + skip})`,
        );
      }
      if (skip < chunk.length) {
        const r = await this.api.call<{ itemCount: number }>(
          'POST',
          `${this.path}/items`,
          undefined,
          packItems(skip ? chunk.slice(skip) : chunk),
        );
        this.stored = r.itemCount;
      } else {
        this.stored = base + chunk.length;
      }
    });
  }

  /** Seals the job; a seal whose reply was lost is found done on the retry. */
  async seal(): Promise<void> {
    await this.retrying('the seal', async (retry) => {
      if (retry) {
        // Pre-flight may still be running from the first request: wait for it to end either way.
        for (;;) {
          const s = await this.api.call<JobStatus>('GET', this.path);
          if (s.state !== 'open') return;
          try {
            await this.api.call('POST', `${this.path}/seal`);
            return;
          } catch (err) {
            if (!(err instanceof CliError) || !/being sealed/.test(err.message)) throw err;
            await pause(1000, this.signal);
          }
        }
      }
      await this.api.call('POST', `${this.path}/seal`);
    });
  }

  /** The job's status; it must still be open to take items. */
  private async openJob(): Promise<JobStatus> {
    const s = await this.api.call<JobStatus>('GET', this.path);
    if (s.state !== 'open')
      throw new CliError(`job ${this.jobId} is ${s.state} on the hub; its upload cannot go on`);
    return s;
  }

  /** Runs `step` until it succeeds, again after each pause while the hub cannot be reached. */
  private async retrying(what: string, step: (retry: boolean) => Promise<void>): Promise<void> {
    const pauses = UPLOAD_RETRY_PAUSES_MS;
    for (let attempt = 0; ; attempt++) {
      this.signal.throwIfAborted();
      try {
        await step(attempt > 0);
        return;
      } catch (err) {
        if (!(err instanceof Unreachable) || this.signal.aborted) throw err;
        if (attempt >= pauses.length)
          throw new CliError(
            `the upload of job ${this.jobId} stopped at ${what}: ${err.message} (tried ${pauses.length} times more over ${Math.round(pauses.reduce((a, b) => a + b, 0) / 1000)} s)`,
            EXIT.unreachable,
          );
        const ms = pauses[attempt] as number;
        this.say(
          `upload interrupted at ${what} (${err.why}); retry ${attempt + 1} of ${pauses.length} in ${ms / 1000} s`,
        );
        await pause(ms, this.signal);
      }
    }
  }
}

/** `shardhub submit`. */
async function submit(cmd: Command, io: CliIo): Promise<number> {
  const v = readValues(cmd, SUBMIT_OPTIONS, io.env);
  const deadline = v.deadline !== undefined ? parseDeadline(v.deadline as string) : null;
  const out = v.out as string;
  // Nothing goes to the hub before the options, --out and the inputs' layout are known to be good.
  if (v.wait) prepareOut(out, undefined, v.overwrite ? 'overwrite' : 'new');
  const api = new Api(v.hub as string, v.token as string);
  const { models } = await api.call<{ models: ModelInfo[] }>('GET', '/api/models');
  const name = v.model as string;
  const model = models.find((m) => m.name === name || m.sha256 === name);
  if (!model)
    throw new UsageError(`the hub has no model "${name}"; it has: ${models.map((m) => m.name).join(', ')}`);
  let listing;
  try {
    listing = await listInputs(v.inputs as string, model);
  } catch (err) {
    throw new UsageError((err as Error).message);
  }

  const stop = interrupts();
  const stderr = process.stderr;
  let jobId: string | undefined;
  let sealed = false;
  try {
    const job = await api.call<{ id: string }>('POST', '/api/jobs', {
      model: model.name,
      priority: v.priority,
      redundancy: v.redundancy,
      deadline,
      requirements: requirements(v),
      cache: v.cache,
    });
    jobId = job.id;
    io.stdout.write(`${job.id}\n`);
    io.stderr.write(
      `job ${job.id}: ${listing.items.length} items (${formatBytes(listing.bytes)}) on ${model.name}\n`,
    );

    const upload = new Progress('uploading', listing.items.length, stderr);
    const resume = new ResumableUpload(api, job.id, listing.items.length, stop.signal, (line) =>
      upload.log(line),
    );
    let batch: NamedItem[] = [];
    let bytes = 0;
    let count = 0;
    let sent = 0;
    const flush = async () => {
      if (!batch.length) return;
      await resume.send(batch);
      sent += bytes;
      batch = [];
      bytes = 0;
    };
    let ended = 'failed';
    try {
      for await (const item of readInputsFolder(listing, model)) {
        stop.signal.throwIfAborted();
        batch.push({ name: item.name, tensors: item.inputs });
        bytes += tensorBytes(item.inputs);
        count++;
        upload.update(count, undefined, formatBytes(sent + bytes));
        // 8 MB a request: progress moves every second or so even on a slow link.
        if (bytes > 8 * 1024 * 1024 || batch.length >= 500) await flush();
      }
      await flush();
      ended = 'uploaded';
    } finally {
      upload.stop(stop.signal.aborted ? 'cancelled' : ended);
    }
    stop.signal.throwIfAborted();
    await resume.seal();
    sealed = true;
  } catch (err) {
    if (jobId !== undefined) {
      // The job never got all its items: cancel it, so no open job is left behind.
      const cancelled = await api
        .retried('POST', `/api/jobs/${encodeURIComponent(jobId)}/cancel`, 10_000)
        .then(() => true)
        .catch(() => false);
      io.stderr.write(
        cancelled
          ? `job ${jobId} cancelled: its upload did not finish\n`
          : `job ${jobId} could not be cancelled (the hub is unreachable); cancel it later with: ${invokedAs(io.env)} jobs --cancel ${jobId}\n`,
      );
    }
    stop.dispose();
    const reason = stop.signal.aborted ? stop.signal.reason : err;
    if (reason instanceof CliError) throw reason;
    throw new CliError((reason as Error).message);
  }
  stop.dispose();
  if (!sealed || !v.wait) return EXIT.ok;
  return waitAndDownload(api, jobId, out, 'new', v['retry-for'] as number, io);
}

/**
 * Waits for a job with a progress bar, then downloads its results into `out` and writes job.json.
 * Ctrl-C detaches (the job keeps running) and says how to re-attach. Returns the exit code.
 */
async function waitAndDownload(
  api: Api,
  id: string,
  out: string | undefined,
  mode: OutMode,
  retryForS: number,
  io: CliIo,
): Promise<number> {
  const stop = interrupts();
  try {
    const status = await waitForJob(api, id, retryForS * 1000, stop.signal);
    const summary =
      status.state === 'completed'
        ? `job ${id} completed: ${status.done} items${status.failed ? `, ${status.failed} failed` : ''} in ${formatDuration(status.elapsedS ?? 0)}`
        : `job ${id} ${status.state}: ${status.done} of ${status.items} items done${status.failed ? `, ${status.failed} failed` : ''}`;
    io.stderr.write(`${summary}\n`);
    if (out !== undefined) {
      const written = await downloadResults(api, id, out, mode, status, stop.signal);
      io.stderr.write(
        `wrote ${written} results to ${out}${status.failed ? `; the failed items and why are in ${join(out, 'job.json')}` : ''}\n`,
      );
    }
    return status.state === 'completed' && status.failed === 0 ? EXIT.ok : EXIT.incomplete;
  } catch (err) {
    if (stop.signal.aborted) {
      io.stderr.write(
        `\njob ${id} keeps running on the hub; pick it up again with: ${invokedAs(io.env)} jobs --wait ${id}${out ? ` --out ${out} --resume` : ''}\n`,
      );
      return EXIT.interrupted;
    }
    throw err;
  } finally {
    stop.dispose();
  }
}

/** Polls a job until it ends, redrawing its progress; retries while the hub cannot be reached. */
async function waitForJob(api: Api, id: string, retryForMs: number, signal: AbortSignal): Promise<JobStatus> {
  const path = `/api/jobs/${encodeURIComponent(id)}`;
  let bar: Progress | undefined;
  let lastValue = 0;
  try {
    for (;;) {
      signal.throwIfAborted();
      const s = await api.retried<JobStatus>('GET', path, retryForMs, (err, attempt) => {
        if (bar) bar.update(lastValue, undefined, `hub unreachable, retrying (${attempt})`);
        else if (attempt === 1)
          process.stderr.write(`${err.message}; retrying for up to ${Math.round(retryForMs / 1000)} s\n`);
      });
      lastValue = s.done + s.failed;
      bar ??= new Progress('running', s.items, process.stderr);
      bar.update(lastValue, s.items, s.state === 'running' ? '' : s.state);
      if (s.state === 'completed' || s.state === 'cancelled') {
        bar.stop(s.failed ? `${s.state}, ${s.failed} failed` : s.state);
        return s;
      }
      await Promise.race([
        sleep(500),
        new Promise((ok) => signal.addEventListener('abort', ok, { once: true })),
      ]);
    }
  } finally {
    bar?.stop();
  }
}

/**
 * Streams the job's results as one tar (`GET /api/jobs/:id/results.tar`) into `<out>/<item>/<output>.npy`,
 * one entry in memory at a time; returns how many items were written. job.json, written first,
 * marks the folder as this job's, and at the end holds the job's status and its failed items.
 */
async function downloadResults(
  api: Api,
  id: string,
  out: string,
  mode: OutMode,
  status: JobStatus,
  signal: AbortSignal,
): Promise<number> {
  prepareOut(out, id, mode);
  mkdirSync(out, { recursive: true });
  writeFileSync(join(out, 'job.json'), JSON.stringify({ id, state: 'downloading' }, null, 2));
  const safe = (s: string) => s.replace(/[^A-Za-z0-9._-]/g, '_').replace(/^\.+/, '_');
  const items = new Set<string>();
  const bar = new Progress('downloading', status.done, process.stderr);
  try {
    for await (const entry of readTar(await api.stream(`/api/jobs/${encodeURIComponent(id)}/results.tar`))) {
      signal.throwIfAborted();
      // The hub writes results/<item>/<output>.npy; anything else (or any other depth) is refused.
      const parts = entry.name.split('/');
      if (parts.length !== 3 || parts[0] !== 'results' || !parts[2]?.endsWith('.npy')) {
        throw new CliError(`unexpected entry "${entry.name.slice(0, 200)}" in the results of job ${id}`);
      }
      const dir = join(out, safe(parts[1] as string));
      const file = join(dir, safe(parts[2] as string));
      mkdirSync(dir, { recursive: true });
      const have = existsSync(file) ? statSync(file).size : -1;
      if (!(mode === 'resume' && have === entry.data.byteLength)) writeFileSync(file, entry.data);
      items.add(dir);
      bar.update(items.size);
    }
  } finally {
    bar.stop();
  }
  const full = await api.call<JobStatus>('GET', `/api/jobs/${encodeURIComponent(id)}`);
  writeFileSync(join(out, 'job.json'), JSON.stringify(full, null, 2));
  return items.size;
}

function defineSubmit(cmd: Command): Command {
  return addOptions(
    cmd.usage('--hub URL --token TOKEN --model NAME --inputs DIR [--out DIR] [options]'),
    SUBMIT_OPTIONS,
  ).addHelpText(
    'after',
    `
Prints the job's id on stdout as soon as the job exists; progress goes to stderr. A connection that
drops during the upload is retried 5 times over about 30 s, going on from the items the hub has;
after that, or on Ctrl-C, the job is cancelled. Ctrl-C while it runs leaves it running (pick it up
with \`jobs --wait ID\`).

Examples:
  shardhub submit --hub http://localhost:8080 --token op_... --model ppocr-det --inputs ./images --out ./results
  shardhub submit --hub http://hub:8080 --token op_... --model mlp-small --inputs ./npy \\
    --priority 10 --deadline 2h --redundancy 2 --kind native --min-gpu-memory 8GB
`,
  );
}

/** The `submit` command for `server/cli.ts`. */
export const SUBMIT = { define: defineSubmit, run: submit };

// ---------------------------------------------------------------------------------- jobs

const JOBS_OPTIONS: OptionTable = {
  ...CONN,
  show: { type: 'string', help: 'show one job in full', arg: 'ID' },
  wait: {
    type: 'string',
    help: 'wait for a job, with progress (with --out: then download its results)',
    arg: 'ID',
  },
  download: { type: 'string', help: "download a job's results now (with --out)", arg: 'ID' },
  out: { type: 'string', help: 'where results are written, for --wait and --download', arg: 'DIR' },
  resume: {
    type: 'boolean',
    help: 'add to the results already in --out (skips files already there)',
    default: false,
  },
  overwrite: { type: 'boolean', help: 'replace the results already in --out', default: false },
  cancel: { type: 'string', help: 'cancel a job', arg: 'ID' },
  json: { type: 'boolean', help: 'print JSON', default: false },
  'retry-for': {
    type: 'int',
    help: 'seconds to keep retrying while the hub cannot be reached',
    default: 300,
    min: 0,
    arg: 'S',
  },
};

/** `shardhub jobs`. */
async function jobs(cmd: Command, io: CliIo): Promise<number> {
  const v = readValues(cmd, JOBS_OPTIONS, io.env);
  const actions = (['show', 'wait', 'download', 'cancel'] as const).filter((k) => v[k] !== undefined);
  if (actions.length > 1) throw new UsageError(`give one of ${actions.map((a) => `--${a}`).join(', ')}`);
  if (v.resume && v.overwrite) throw new UsageError('give --resume or --overwrite, not both');
  const mode: OutMode = v.resume ? 'resume' : v.overwrite ? 'overwrite' : 'new';
  const api = new Api(v.hub as string, v.token as string);
  const out = v.out as string | undefined;
  if (v.cancel) {
    const j = await api.call<JobStatus>('POST', `/api/jobs/${encodeURIComponent(v.cancel as string)}/cancel`);
    io.stdout.write(`${j.id} ${j.state}\n`);
    return EXIT.ok;
  }
  if (v.show) {
    const j = await api.call<JobStatus>('GET', `/api/jobs/${encodeURIComponent(v.show as string)}`);
    io.stdout.write(`${JSON.stringify(j, null, 2)}\n`);
    return EXIT.ok;
  }
  if (v.wait) {
    const id = v.wait as string;
    if (out !== undefined) prepareOut(out, id, mode);
    return waitAndDownload(api, id, out, mode, v['retry-for'] as number, io);
  }
  if (v.download) {
    const id = v.download as string;
    if (out === undefined) throw new UsageError('--download needs --out DIR');
    prepareOut(out, id, mode);
    const status = await api.call<JobStatus>('GET', `/api/jobs/${encodeURIComponent(id)}`);
    const stop = interrupts();
    try {
      const written = await downloadResults(api, id, out, mode, status, stop.signal);
      io.stderr.write(`wrote ${written} results of job ${id} (${status.state}) to ${out}\n`);
    } finally {
      stop.dispose();
    }
    return status.state === 'completed' && status.failed === 0 ? EXIT.ok : EXIT.incomplete;
  }
  if (out !== undefined) throw new UsageError('--out goes with --wait ID or --download ID');
  const { jobs: list } = await api.call<{ jobs: (JobStatus & { model: string; createdAt: number })[] }>(
    'GET',
    '/api/jobs',
  );
  if (v.json) {
    io.stdout.write(`${JSON.stringify(list, null, 2)}\n`);
    return EXIT.ok;
  }
  // The hub's ETA is the items left at the job's recent rate (`server/job-view.ts`).
  const rows = list.map((j) => [
    j.id,
    j.model,
    j.state,
    `${j.done}/${j.items}`,
    String(j.failed),
    j.etaS === null ? '-' : formatDuration(j.etaS),
    new Date(j.createdAt).toISOString(),
  ]);
  io.stdout.write(table(['ID', 'MODEL', 'STATE', 'DONE', 'FAILED', 'ETA', 'CREATED'], rows));
  return EXIT.ok;
}

function defineJobs(cmd: Command): Command {
  return addOptions(
    cmd.usage(
      '--hub URL --token TOKEN [--show ID | --wait ID [--out DIR] | --download ID --out DIR | --cancel ID]',
    ),
    JOBS_OPTIONS,
  ).addHelpText(
    'after',
    `
Without an action, lists the jobs.

Examples:
  shardhub jobs --hub http://localhost:8080 --token op_...
  shardhub jobs --hub http://localhost:8080 --token op_... --wait j_abc --out ./results
  shardhub jobs --hub http://localhost:8080 --token op_... --download j_abc --out ./results --resume
`,
  );
}

/** The `jobs` command for `server/cli.ts`. */
export const JOBS = { define: defineJobs, run: jobs };

// ---------------------------------------------------------------------------------- workers

const WORKERS_OPTIONS: OptionTable = {
  ...CONN,
  kind: { type: 'choice', choices: ['browser', 'native'], help: 'only workers of this kind' },
  backend: { type: 'string', help: 'only workers on this backend (webgpu, wasm, cuda, cpu, sim)' },
  pool: { type: 'string', help: 'only native nodes of this pool', arg: 'NAME' },
  online: { type: 'boolean', help: 'only online workers', default: false },
  'min-gpu-memory': { type: 'size', help: 'only workers with this much GPU memory (8GB, 512MiB)', min: 0 },
  'min-cores': { type: 'int', help: 'only workers with this many CPU cores', min: 0 },
  json: { type: 'boolean', help: 'print JSON', default: false },
};

/** `shardhub workers`. */
async function workers(cmd: Command, io: CliIo): Promise<number> {
  const v = readValues(cmd, WORKERS_OPTIONS, io.env);
  const api = new Api(v.hub as string, v.token as string);
  const q = new URLSearchParams();
  for (const [flag, key] of [
    ['kind', 'kind'],
    ['backend', 'backend'],
    ['pool', 'pool'],
    ['min-gpu-memory', 'minGpuMemory'],
    ['min-cores', 'minCores'],
  ] as const) {
    if (v[flag] !== undefined) q.set(key, String(v[flag]));
  }
  if (v.online) q.set('online', 'true');
  type W = {
    id: string;
    name: string;
    kind: string;
    backend: string;
    state: string;
    cores: number;
    itemsDone: number;
    pool: string | null;
  };
  const { workers: list } = await api.call<{ workers: W[] }>('GET', `/api/workers?${q}`);
  if (v.json) {
    io.stdout.write(`${JSON.stringify(list, null, 2)}\n`);
    return EXIT.ok;
  }
  const rows = list.map((w) => [
    w.id,
    w.name,
    w.kind,
    w.backend,
    w.state,
    String(w.cores),
    w.pool ?? '-',
    String(w.itemsDone),
  ]);
  io.stdout.write(table(['ID', 'NAME', 'KIND', 'BACKEND', 'STATE', 'CORES', 'POOL', 'DONE'], rows));
  return EXIT.ok;
}

/** The `workers` command for `server/cli.ts`. */
export const WORKERS = {
  define: (cmd: Command) => addOptions(cmd.usage('--hub URL --token TOKEN [filters]'), WORKERS_OPTIONS),
  run: workers,
};

function table(head: string[], rows: string[][]): string {
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const fmt = (r: string[]) =>
    r
      .map((c, i) => c.padEnd(widths[i] ?? 0))
      .join('  ')
      .trimEnd();
  return [fmt(head), ...rows.map(fmt)].join('\n') + '\n';
}
