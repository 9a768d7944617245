/**
 * Operator commands that talk to a hub's REST API: `submit`, `jobs`, `workers`.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { ModelInfo } from '../protocol/model.ts';
import { packItems, type NamedItem } from '../protocol/pack.ts';
import { tensorBytes } from '../protocol/pack.ts';
import { readInputsFolder } from './io/inputs.ts';
import { readTar } from './io/tar.ts';
import { helpText, parseOptions, type OptionTable } from './options.ts';

const CONN: OptionTable = {
  hub: { type: 'string', help: 'hub URL', env: 'SHARDHUB_HUB', required: true, arg: 'URL' },
  token: {
    type: 'string',
    help: 'operator token',
    env: 'SHARDHUB_OPERATOR_TOKEN',
    required: true,
    arg: 'TOKEN',
  },
};

/** A minimal REST client with clear errors. */
class Api {
  constructor(
    private readonly hub: string,
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
    const json = (await res.json().catch(() => ({}))) as { data?: T; error?: { message: string } };
    if (!res.ok || json.error) throw refusal(res.status, json.error?.message);
    return json.data as T;
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

  /** `fetch` with the operator token; a hub that cannot be reached is a clear error. */
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
      throw new Error(
        `cannot reach the hub at ${this.hub}: ${(err as Error).cause ?? (err as Error).message}`,
      );
    }
  }
}

/** The error for a refused request: the hub's own message, and a word on the token for a 401. */
function refusal(status: number, message: string | undefined): Error {
  const why = message ?? `HTTP ${status}`;
  return new Error(status === 401 ? `the hub refused the operator token (${why})` : why);
}

const SUBMIT: OptionTable = {
  ...CONN,
  model: { type: 'string', help: 'registry model name or sha256', required: true, arg: 'NAME' },
  inputs: {
    type: 'string',
    help: 'folder of .npy files, <item>/<input>.npy folders, or images',
    required: true,
    arg: 'PATH',
  },
  out: {
    type: 'string',
    help: 'where results are written (<out>/<item>/<output>.npy)',
    default: 'results',
    arg: 'DIR',
  },
  priority: { type: 'int', help: 'job priority (higher first)', default: 0 },
  wait: { type: 'boolean', help: 'wait for the job and download results', default: true, negatable: true },
};

/** `shardhub submit`. */
export async function submitCommand(argv: string[]): Promise<number> {
  const { help, values: v } = parseOptions(argv, SUBMIT);
  if (help) {
    process.stdout.write(
      helpText(
        'shardhub submit --hub URL --token TOKEN --model NAME --inputs PATH [--out DIR]',
        'Submit a job, show its progress and write its results.',
        SUBMIT,
        [
          'shardhub submit --hub http://localhost:8080 --token op_... --model ppocr-det --inputs ./images --out ./results',
        ],
      ),
    );
    return 0;
  }
  const api = new Api(v.hub as string, v.token as string);
  const { models } = await api.call<{ models: ModelInfo[] }>('GET', '/api/models');
  const name = v.model as string;
  const model = models.find((m) => m.name === name || m.sha256 === name);
  if (!model)
    throw new Error(`the hub has no model "${name}"; it has: ${models.map((m) => m.name).join(', ')}`);

  const job = await api.call<{ id: string }>('POST', '/api/jobs', {
    model: model.name,
    priority: v.priority,
  });
  let batch: NamedItem[] = [];
  let bytes = 0;
  let count = 0;
  const flush = async () => {
    if (!batch.length) return;
    await api.call('POST', `/api/jobs/${job.id}/items`, undefined, packItems(batch));
    batch = [];
    bytes = 0;
  };
  for await (const item of readInputsFolder(v.inputs as string, model)) {
    batch.push({ name: item.name, tensors: item.inputs });
    bytes += tensorBytes(item.inputs);
    count++;
    if (bytes > 32 * 1024 * 1024 || batch.length >= 2000) await flush();
  }
  await flush();
  if (count === 0) {
    await api.call('POST', `/api/jobs/${job.id}/cancel`);
    throw new Error(`no items found in ${v.inputs as string}`);
  }
  await api.call('POST', `/api/jobs/${job.id}/seal`);
  process.stderr.write(`job ${job.id}: ${count} items on ${model.name}\n`);
  process.stdout.write(`${job.id}\n`);
  if (!v.wait) return 0;

  const status = await waitForJob(api, job.id);
  const out = v.out as string;
  const written = await downloadResults(api, job.id, out);
  writeFileSync(join(out, 'job.json'), JSON.stringify(status, null, 2));
  process.stderr.write(
    `wrote ${written} results to ${out}${status.failed ? `; ${status.failed} item(s) failed, see ${join(out, 'job.json')}` : ''}\n`,
  );
  return status.state === 'completed' && status.failed === 0 ? 0 : 3;
}

interface JobStatus {
  id: string;
  state: string;
  items: number;
  done: number;
  failed: number;
  itemsPerSec: number;
  etaS: number | null;
}

async function waitForJob(api: Api, id: string): Promise<JobStatus> {
  const tty = process.stderr.isTTY;
  let lastLine = 0;
  for (;;) {
    const s = await api.call<JobStatus>('GET', `/api/jobs/${id}`);
    const frac = s.items ? (s.done + s.failed) / s.items : 0;
    const bar = `${'#'.repeat(Math.round(frac * 30)).padEnd(30, '.')}`;
    const line = `[${bar}] ${s.done}/${s.items} done${s.failed ? `, ${s.failed} failed` : ''}  ${s.itemsPerSec.toFixed(1)} items/s${s.etaS !== null ? `  eta ${Math.ceil(s.etaS)}s` : ''}`;
    if (tty) process.stderr.write(`\r${line}`);
    else if (Date.now() - lastLine > 5000 || s.state === 'completed') {
      process.stderr.write(`${line}\n`);
      lastLine = Date.now();
    }
    if (s.state === 'completed' || s.state === 'cancelled') {
      if (tty) process.stderr.write('\n');
      return s;
    }
    await new Promise((ok) => setTimeout(ok, 500));
  }
}

/**
 * Streams the job's results as one tar (`GET /api/jobs/:id/results.tar`) into `<out>/<item>/<output>.npy`,
 * one entry in memory at a time; returns how many items were written.
 */
async function downloadResults(api: Api, id: string, out: string): Promise<number> {
  mkdirSync(out, { recursive: true });
  const safe = (s: string) => s.replace(/[^A-Za-z0-9._-]/g, '_').replace(/^\.+/, '_');
  const items = new Set<string>();
  for await (const entry of readTar(await api.stream(`/api/jobs/${id}/results.tar`))) {
    // The hub writes results/<item>/<output>.npy; anything else (or any other depth) is refused.
    const parts = entry.name.split('/');
    if (parts.length !== 3 || parts[0] !== 'results' || !parts[2]?.endsWith('.npy')) {
      throw new Error(`unexpected entry "${entry.name.slice(0, 200)}" in the results of job ${id}`);
    }
    const dir = join(out, safe(parts[1] as string));
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, safe(parts[2] as string)), entry.data);
    items.add(dir);
  }
  return items.size;
}

const JOBS: OptionTable = {
  ...CONN,
  cancel: { type: 'string', help: 'cancel this job', arg: 'ID' },
  show: { type: 'string', help: 'show one job in full', arg: 'ID' },
  json: { type: 'boolean', help: 'print JSON', default: false },
};

/** `shardhub jobs`. */
export async function jobsCommand(argv: string[]): Promise<number> {
  const { help, values: v } = parseOptions(argv, JOBS);
  if (help) {
    process.stdout.write(
      helpText(
        'shardhub jobs --hub URL --token TOKEN [--show ID | --cancel ID]',
        'List, show or cancel jobs.',
        JOBS,
      ),
    );
    return 0;
  }
  const api = new Api(v.hub as string, v.token as string);
  if (v.cancel) {
    const j = await api.call<JobStatus>('POST', `/api/jobs/${encodeURIComponent(v.cancel as string)}/cancel`);
    process.stdout.write(`${j.id} ${j.state}\n`);
    return 0;
  }
  if (v.show) {
    const j = await api.call<JobStatus>('GET', `/api/jobs/${encodeURIComponent(v.show as string)}`);
    process.stdout.write(`${JSON.stringify(j, null, 2)}\n`);
    return 0;
  }
  const { jobs } = await api.call<{ jobs: (JobStatus & { model: string; createdAt: number })[] }>(
    'GET',
    '/api/jobs',
  );
  if (v.json) {
    process.stdout.write(`${JSON.stringify(jobs, null, 2)}\n`);
    return 0;
  }
  const rows = jobs.map((j) => [
    j.id,
    j.model,
    j.state,
    `${j.done}/${j.items}`,
    String(j.failed),
    new Date(j.createdAt).toISOString(),
  ]);
  process.stdout.write(table(['ID', 'MODEL', 'STATE', 'DONE', 'FAILED', 'CREATED'], rows));
  return 0;
}

const WORKERS: OptionTable = {
  ...CONN,
  kind: { type: 'string', help: 'browser or native' },
  backend: { type: 'string', help: 'webgpu, wasm, cuda, cpu or sim' },
  pool: { type: 'string', help: 'pool label of native nodes' },
  online: { type: 'boolean', help: 'only online workers', default: false },
  'min-gpu-memory': { type: 'number', help: 'minimum GPU memory in bytes', min: 0, arg: 'BYTES' },
  'min-cores': { type: 'int', help: 'minimum CPU cores', min: 0 },
  json: { type: 'boolean', help: 'print JSON', default: false },
};

/** `shardhub workers`. */
export async function workersCommand(argv: string[]): Promise<number> {
  const { help, values: v } = parseOptions(argv, WORKERS);
  if (help) {
    process.stdout.write(
      helpText('shardhub workers --hub URL --token TOKEN [filters]', 'List workers.', WORKERS),
    );
    return 0;
  }
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
  const { workers } = await api.call<{ workers: W[] }>('GET', `/api/workers?${q}`);
  if (v.json) {
    process.stdout.write(`${JSON.stringify(workers, null, 2)}\n`);
    return 0;
  }
  const rows = workers.map((w) => [
    w.id,
    w.name,
    w.kind,
    w.backend,
    w.state,
    String(w.cores),
    w.pool ?? '-',
    String(w.itemsDone),
  ]);
  process.stdout.write(table(['ID', 'NAME', 'KIND', 'BACKEND', 'STATE', 'CORES', 'POOL', 'DONE'], rows));
  return 0;
}

function table(head: string[], rows: string[][]): string {
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const fmt = (r: string[]) =>
    r
      .map((c, i) => c.padEnd(widths[i] ?? 0))
      .join('  ')
      .trimEnd();
  return [fmt(head), ...rows.map(fmt)].join('\n') + '\n';
}
