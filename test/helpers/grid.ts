/**
 * Test helpers: a real hub (in-process or as a child process), real native nodes as child
 * processes, a REST client, polling, and reference outputs from a standalone onnxruntime-node session.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as ort from 'onnxruntime-node';
import assert from 'node:assert/strict';
import type { ModelInfo } from '../../protocol/model.ts';
import { packItems, unpackTensors, type NamedItem } from '../../protocol/pack.ts';
import { bytesOf, compareTensors, type WireTensor } from '../../protocol/tensor.ts';
import { HubServer, type HubConfig } from '../../server/app.ts';
import { createLogger } from '../../server/logger.ts';
import { NODE_V8_FLAGS, nodeEnv } from '../../native/launch.ts';
import { HUB_NODE_FLAGS } from '../../server/node-flags.ts';
import { haproxyConfig, type HaproxyOptions } from '../../scripts/haproxy-config.ts';
import type { SimNodesSpec } from './sim-nodes.ts';

export const ROOT = resolve(fileURLToPath(import.meta.url), '../../..');

/** The processes whose command line holds `marker`: pid and command line. */
export function processesWith(marker: string): { pid: number; cmd: string }[] {
  const found: { pid: number; cmd: string }[] = [];
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e) || Number(e) === process.pid) continue;
    try {
      const cmd = readFileSync(`/proc/${e}/cmdline`, 'utf8').split('\0').join(' ');
      if (cmd.includes(marker)) found.push({ pid: Number(e), cmd });
    } catch {
      /* gone meanwhile */
    }
  }
  return found;
}

/**
 * Kills every process whose command line holds `marker` (a test's temporary folder): what a test
 * started and a process group kill does not reach, such as a node that ran itself again in a
 * group of its own and outlived its parent.
 */
export function killProcessesWith(marker: string): void {
  for (const p of processesWith(marker)) {
    try {
      process.kill(p.pid, 'SIGKILL');
    } catch {
      /* gone meanwhile */
    }
  }
}

/** A fresh temp dir, removed by the returned cleanup. */
export function tempDir(prefix = 'shardhub-test-'): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/** A TCP port free right now on 127.0.0.1. */
export async function freePort(): Promise<number> {
  return new Promise((ok, fail) => {
    const s = createServer();
    s.once('error', fail);
    s.listen(0, '127.0.0.1', () => {
      const addr = s.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      s.close(() => ok(port));
    });
  });
}

/** `shardhub serve`'s arguments for a bare hub on 127.0.0.1: no demo job, no local node. */
export function serveArgs(port: number, dataDir: string, extra: string[] = []): string[] {
  return [
    'serve',
    '--port',
    String(port),
    '--host',
    '127.0.0.1',
    '--data',
    dataDir,
    '--no-demo',
    '--no-local-node',
    ...extra,
  ];
}

/**
 * Starts `shardhub serve` as a child process (a bare hub on 127.0.0.1, fast liveness settings),
 * with the hub's Node flags, so that it does not run itself again in a child: a signal sent to it
 * reaches the hub itself.
 */
export function spawnHub(port: number, dataDir: string, extra: string[] = []): Proc {
  const fast = ['--heartbeat-ms', '500', '--offline-after-ms', '2000'];
  return spawnTs('server/cli.ts', serveArgs(port, dataDir, [...fast, ...extra]), {}, HUB_NODE_FLAGS);
}

/** Starts an in-process hub on 127.0.0.1, port 0, fast liveness settings. */
export async function startHub(dataDir: string, config: Partial<HubConfig> = {}): Promise<HubServer> {
  return HubServer.start(
    {
      host: '127.0.0.1',
      port: 0,
      dataDir,
      ...config,
      hub: { heartbeatMs: 500, offlineAfterMs: 2000, ...config.hub },
    },
    createLogger('hub', process.env.SHARDHUB_LOG_LEVEL ?? 'warn'),
  );
}

/** A child process with its output kept for assertions and failure messages. */
export interface Proc {
  child: ChildProcess;
  output: () => string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/** Spawns `node --import tsx <script> ...args` from the repo root. */
export function spawnTs(
  script: string,
  args: string[],
  env: NodeJS.ProcessEnv = {},
  nodeFlags: readonly string[] = [],
): Proc {
  const child = spawn(process.execPath, ['--import', 'tsx', ...nodeFlags, resolve(ROOT, script), ...args], {
    cwd: ROOT,
    env: { ...process.env, SHARDHUB_LOG_LEVEL: process.env.SHARDHUB_LOG_LEVEL ?? 'warn', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout?.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((ok) =>
    child.once('exit', (code, signal) => ok({ code, signal })),
  );
  return { child, output: () => out, exited };
}

/**
 * Starts a native node child process, with the flags and malloc settings `shardhub node` runs with
 * (so it does not start a child of its own, and a test's signals reach the node itself), and `env`
 * over this process's environment.
 */
export function startNode(
  hubUrl: string,
  token: string,
  stateDir: string,
  extra: string[] = [],
  env: NodeJS.ProcessEnv = {},
): Proc {
  return spawnTs(
    'native/main.ts',
    ['--hub', hubUrl, '--token', token, '--state', stateDir, '--cache', join(stateDir, 'cache'), ...extra],
    nodeEnv(env),
    NODE_V8_FLAGS,
  );
}

/** Polls until `check` returns a truthy value or the time runs out. */
export async function waitFor<T>(
  what: string,
  check: () => T | Promise<T>,
  timeoutMs = 60_000,
  everyMs = 50,
): Promise<NonNullable<T>> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await check();
    if (v) return v as NonNullable<T>;
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((ok) => setTimeout(ok, everyMs));
  }
}

/** A REST client for tests. */
export class Rest {
  constructor(
    readonly url: string,
    readonly token: string | undefined,
  ) {}

  async req(
    method: string,
    path: string,
    body?: unknown,
    raw?: Uint8Array,
  ): Promise<{ status: number; json: any; bytes: Uint8Array }> {
    const res = await fetch(this.url + path, {
      method,
      headers: {
        ...(this.token ? { Authorization: `Bearer ${this.token}` } : {}),
        ...(raw
          ? { 'Content-Type': 'application/octet-stream' }
          : body !== undefined
            ? { 'Content-Type': 'application/json' }
            : {}),
      },
      body: raw
        ? raw.slice()
        : body !== undefined
          ? typeof body === 'string'
            ? body
            : JSON.stringify(body)
          : undefined,
    });
    const bytes = new Uint8Array(await res.arrayBuffer());
    let json: any = undefined;
    try {
      json = JSON.parse(Buffer.from(bytes).toString('utf8'));
    } catch {
      /* binary */
    }
    return { status: res.status, json, bytes };
  }

  async data(method: string, path: string, body?: unknown, raw?: Uint8Array): Promise<any> {
    const r = await this.req(method, path, body, raw);
    if (r.status >= 400) throw new Error(`${method} ${path}: ${r.status} ${JSON.stringify(r.json)}`);
    return r.json.data;
  }

  /**
   * Creates a job, uploads items in chunks, seals it. The result cache is off unless `opts` turn it
   * on: tests submit the same calibration inputs again (a warm-up's), and mean them to run.
   */
  async submit(model: string, items: NamedItem[], opts: Record<string, unknown> = {}): Promise<string> {
    const job = await this.data('POST', '/api/jobs', { model, cache: false, ...opts });
    for (let i = 0; i < items.length; i += 200) {
      await this.data('POST', `/api/jobs/${job.id}/items`, undefined, packItems(items.slice(i, i + 200)));
    }
    await this.data('POST', `/api/jobs/${job.id}/seal`);
    return job.id as string;
  }
}

/** Polls `GET /api/jobs/:id` until the job is completed; resolves with its view. */
export function jobDone(rest: Rest, jobId: string, timeoutMs = 180_000, everyMs = 100): Promise<any> {
  return waitFor(
    `job ${jobId} completed`,
    async () => {
      const s = await rest.data('GET', `/api/jobs/${jobId}`);
      return s.state === 'completed' ? s : undefined;
    },
    timeoutMs,
    everyMs,
  );
}

/** Runs a model standalone in onnxruntime-node: the reference every grid result is compared with. */
export class Reference {
  private constructor(private readonly session: ort.InferenceSession) {}

  static async open(path: string): Promise<Reference> {
    return new Reference(await ort.InferenceSession.create(readFileSync(path), { intraOpNumThreads: 1 }));
  }

  async run(inputs: WireTensor[]): Promise<WireTensor[]> {
    const feeds: Record<string, ort.Tensor> = {};
    for (const t of inputs) {
      const copy = new Uint8Array(t.data);
      const typed =
        t.dtype === 'float32'
          ? new Float32Array(copy.buffer)
          : t.dtype === 'int64'
            ? new BigInt64Array(copy.buffer)
            : t.dtype === 'int32'
              ? new Int32Array(copy.buffer)
              : copy;
      feeds[t.name] = new ort.Tensor(t.dtype as 'float32', typed as Float32Array, t.dims);
    }
    const out = await this.session.run(feeds);
    return Object.entries(out).map(([name, v]) => ({
      name,
      dtype: v.type as WireTensor['dtype'],
      dims: [...v.dims],
      data: bytesOf(v.data as Float32Array).slice(),
    }));
  }

  async close(): Promise<void> {
    await this.session.release();
  }
}

/** Path of a registry model's file, through the hub's registry. */
export function modelPath(hub: HubServer, model: ModelInfo): string {
  const p = hub.hub.models.filePath(model.sha256);
  if (!p) throw new Error(`no file for ${model.name}`);
  return p;
}

/**
 * Asserts every item of the job has exactly one result equal to the standalone reference (but for
 * `failed` items, which ended failed and have none).
 */
export async function checkResults(
  hub: HubServer,
  jobId: string,
  sent: NamedItem[],
  failed = 0,
): Promise<void> {
  const job = await hub.hub.jobs.get(jobId);
  assert.ok(job);
  const model = hub.hub.models.bySha(job.modelSha256);
  assert.ok(model);
  const ref = await Reference.open(modelPath(hub, model));
  try {
    const byName = new Map(sent.map((it) => [it.name, it]));
    const seen = new Set<string>();
    for await (const r of hub.hub.jobs.results(jobId)) {
      assert.ok(!seen.has(r.name), `item ${r.name} has two results`);
      seen.add(r.name);
      const input = byName.get(r.name);
      assert.ok(input, `result for unknown item ${r.name}`);
      const want = await ref.run(input.tensors);
      const got = unpackTensors(r.outputs);
      for (const w of want) {
        const g = got.find((t) => t.name === w.name);
        assert.ok(g, `item ${r.name} lacks output ${w.name}`);
        const diff = compareTensors(g, w, model.tolerance);
        assert.equal(diff, undefined, `item ${r.name} output ${w.name} differs from the reference: ${diff}`);
      }
    }
    assert.equal(seen.size, sent.length - failed, 'every item has exactly one result');
  } finally {
    await ref.close();
  }
}

/**
 * Starts several native sim nodes in one child process (`test/helpers/sim-nodes.ts`: `runNode` per
 * node), with a native node's flags and malloc settings. Wait for `sim nodes started` in its output.
 */
export function startSimNodes(spec: SimNodesSpec): Proc {
  return spawnTs('test/helpers/sim-nodes.ts', [JSON.stringify(spec)], nodeEnv({}), NODE_V8_FLAGS);
}

/** Where HAProxy is installed (Debian's `haproxy`; `.ci/run` installs it). */
export const HAPROXY = '/usr/sbin/haproxy';

/**
 * Starts HAProxy in the foreground (`-db`) with the configuration `scripts/haproxy-config.ts`
 * writes for `hubs`, listening on a free port of 127.0.0.1; its log (one line per request: which
 * hub served it) is the process's output. Resolves once a request through it reaches a hub.
 */
export async function startHaproxy(
  dir: string,
  hubs: string[],
  opts: Partial<HaproxyOptions> = {},
): Promise<{ proc: Proc; url: string }> {
  const port = await freePort();
  const cfg = join(dir, `haproxy-${port}.cfg`);
  writeFileSync(cfg, haproxyConfig({ listen: [`127.0.0.1:${port}`], hubs, checkMs: 300, ...opts }));
  const child = spawn(HAPROXY, ['-db', '-f', cfg], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((ok) =>
    child.once('exit', (code, signal) => ok({ code, signal })),
  );
  const proc: Proc = { child, output: () => out, exited };
  const url = `http://127.0.0.1:${port}`;
  await waitFor(
    'the balancer answers',
    async () => {
      if (child.exitCode !== null) throw new Error('HAProxy exited');
      const r = await fetch(`${url}/api/health`).catch(() => undefined);
      return r?.status === 200;
    },
    20_000,
  ).catch((err: Error) => {
    child.kill('SIGKILL');
    throw new Error(`${err.message}; HAProxy said:\n${out.slice(-2000)}`);
  });
  return { proc, url };
}
