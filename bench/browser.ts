/**
 * `npm run bench -- browser [--json] [--backends webgpu,wasm] [--seconds S] [--rounds R]`
 *
 * What the grid costs a browser worker: per backend, the same headless Chromium (Debian's, WebGPU
 * through SwiftShader) runs one model twice, in one run:
 * - **grid**: the contributor page (`?autostart=1&backend=…`) as the hub's only worker; a warm-up job
 *   (model download, session, benchmark), then measured jobs of about S seconds (default 10), each
 *   timed from its first assignment to its last result as the hub records them: items/s as the grid
 *   delivers them;
 * - **standalone**: `standalone.html`, onnxruntime-web configured identically in a module worker,
 *   running the same model on the same inputs, batch size and thread count in a tight loop for S s.
 * The two alternate for R rounds (default 2) and each keeps its best; `ratio` = grid / standalone
 * (target >= 0.9).
 *
 * Models where compute dominates, each small enough for its backend here: `mlp-small` with 256 rows
 * per item on WebGPU (SwiftShader is slow), PaddleOCR detection (`ppocr-det`) at 128x128 on WASM.
 * The hub's result checks are off (no pre-flight canaries, every worker trusted): a lone worker
 * has nobody to be cross-checked against, and checks are the scheduler's cost, not the browser's.
 * Needs `npm run build` and Chromium (`CHROMIUM_PATH`, default /usr/bin/chromium). Prints figures;
 * never fails on time.
 *
 * Chromium is driven over its DevTools pipe by the few commands the bench needs (open a tab,
 * evaluate an expression), not by Playwright. Playwright enables the DevTools `Network` domain on
 * every page it drives, and Chromium then copies every WebSocket frame, base64-encoded, into an
 * event for the driver: the grid page's traffic (each item's inputs in, outputs out, ~27 MB/s here)
 * cost the browser process, the renderer and the bench's own Node process about 2 s of CPU per
 * 8 s job, on the same two cores as the inference worker, while the standalone page (no traffic)
 * paid nothing. A contributor's browser has no driver attached; neither page has one here.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Readable, Writable } from 'node:stream';
import type { ModelInfo } from '../protocol/model.ts';
import { packItems, type NamedItem } from '../protocol/pack.ts';
import type { JobRequirements } from '../protocol/operator.ts';
import type { HubServer } from '../server/app.ts';
import { DEFAULT_TRUST_OPTIONS } from '../server/trust.ts';
import { calibrationInputs } from '../worker/calibration.ts';
import type { EngineInfo } from '../client/inference/messages.ts';
import type { StandaloneResult } from '../client/standalone/messages.ts';
import { ROOT, benchHub, printTable, until } from './_grid.ts';

type BrowserBackend = 'webgpu' | 'wasm';

/** One backend's case: the model and the dims of one item. */
interface Case {
  backend: BrowserBackend;
  model: string;
  dims: Record<string, number[]>;
  /** Items in the warm-up job. */
  warmup: number;
}

const CASES: Record<BrowserBackend, Case> = {
  webgpu: { backend: 'webgpu', model: 'mlp-small', dims: { x: [256, 64] }, warmup: 64 },
  wasm: { backend: 'wasm', model: 'ppocr-det', dims: { x: [1, 3, 128, 128] }, warmup: 8 },
};

/** One row of the report. */
export interface BrowserBenchRow {
  backend: BrowserBackend;
  grid_items_per_s: number;
  standalone_items_per_s: number;
  ratio: number;
}

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const ARGS = [
  '--headless',
  '--no-sandbox',
  '--enable-unsafe-webgpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
  // As Playwright launches it: a tab the bench is not looking at still runs at full speed.
  '--disable-background-timer-throttling',
  '--disable-backgrounding-occluded-windows',
  '--disable-renderer-backgrounding',
  '--disable-extensions',
  '--disable-dev-shm-usage',
  '--mute-audio',
];

/**
 * Chromium over `--remote-debugging-pipe` (requests on fd 3, replies and events on fd 4, each a
 * JSON message ended by a NUL byte), with only the commands the bench sends; see the file comment.
 */
export class Chromium {
  private nextId = 0;
  private readonly pending = new Map<number, { ok: (v: unknown) => void; fail: (e: Error) => void }>();
  private buffered = '';

  private constructor(
    private readonly proc: ChildProcess,
    private readonly dataDir: string,
  ) {
    const out = proc.stdio[4] as Readable;
    out.setEncoding('utf8');
    out.on('data', (chunk: string) => this.onData(chunk));
    proc.once('exit', (code, signal) => {
      for (const p of this.pending.values()) p.fail(new Error(`Chromium exited (${code ?? signal})`));
      this.pending.clear();
    });
  }

  /** `extraArgs`: more flags (the gpu bench's for a real GPU headless). */
  static async launch(extraArgs: readonly string[] = []): Promise<Chromium> {
    const dataDir = mkdtempSync(join(tmpdir(), 'shardhub-chromium-'));
    const proc = spawn(
      CHROMIUM,
      [...ARGS, ...extraArgs, `--user-data-dir=${dataDir}`, '--remote-debugging-pipe', '--no-startup-window'],
      // stdout and stderr are pipes, drained: with them sent to /dev/null the pipe stayed silent.
      { stdio: ['ignore', 'pipe', 'pipe', 'pipe', 'pipe'] },
    );
    proc.stdout?.resume();
    proc.stderr?.resume();
    const chrome = new Chromium(proc, dataDir);
    await chrome.send('Browser.getVersion');
    return chrome;
  }

  /**
   * Opens `url` in a window of its own: a second tab in the same window would hide the first one,
   * and the contributor page pauses while it is hidden.
   */
  async open(url: string): Promise<Tab> {
    const { targetId } = (await this.send('Target.createTarget', { url, newWindow: true })) as {
      targetId: string;
    };
    const { sessionId } = (await this.send('Target.attachToTarget', { targetId, flatten: true })) as {
      sessionId: string;
    };
    return new Tab(this, targetId, sessionId);
  }

  /** Sends a command; rejects if no reply comes within `timeoutMs`. */
  send(method: string, params: object = {}, sessionId?: string, timeoutMs = 120_000): Promise<unknown> {
    const id = ++this.nextId;
    return new Promise((ok, fail) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        fail(new Error(`Chromium did not answer ${method} in ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, {
        ok: (v) => {
          clearTimeout(timer);
          ok(v);
        },
        fail: (e) => {
          clearTimeout(timer);
          fail(e);
        },
      });
      (this.proc.stdio[3] as Writable).write(`${JSON.stringify({ id, method, params, sessionId })}\0`);
    });
  }

  async close(): Promise<void> {
    const exited = new Promise((ok) => this.proc.once('exit', ok));
    await this.send('Browser.close').catch(() => undefined);
    await Promise.race([exited, new Promise((ok) => setTimeout(ok, 5000))]);
    this.proc.kill('SIGKILL');
    rmSync(this.dataDir, { recursive: true, force: true });
  }

  private onData(chunk: string): void {
    this.buffered += chunk;
    for (let end = this.buffered.indexOf('\0'); end >= 0; end = this.buffered.indexOf('\0')) {
      const msg = JSON.parse(this.buffered.slice(0, end)) as {
        id?: number;
        result?: unknown;
        error?: { message: string };
      };
      this.buffered = this.buffered.slice(end + 1);
      const p = msg.id === undefined ? undefined : this.pending.get(msg.id);
      if (!p) continue; // an event: nothing here subscribes to any
      this.pending.delete(msg.id as number);
      if (msg.error) p.fail(new Error(msg.error.message));
      else p.ok(msg.result);
    }
  }
}

/** A tab of {@link Chromium}. */
export class Tab {
  constructor(
    private readonly chrome: Chromium,
    private readonly targetId: string,
    private readonly sessionId: string,
  ) {}

  /** Evaluates an expression in the page, awaiting it if it is a promise; returns its value as JSON. */
  async evaluate<T>(expression: string): Promise<T> {
    const res = (await this.chrome.send(
      'Runtime.evaluate',
      { expression, awaitPromise: true, returnByValue: true },
      this.sessionId,
    )) as {
      result: { value?: unknown };
      exceptionDetails?: { text: string; exception?: { description?: string } };
    };
    if (res.exceptionDetails) {
      const e = res.exceptionDetails;
      throw new Error(e.exception?.description ?? e.text);
    }
    return res.result.value as T;
  }

  /** Polls `expression` until it is truthy. */
  async waitFor(what: string, expression: string, timeoutMs = 60_000): Promise<void> {
    for (const end = Date.now() + timeoutMs; ;) {
      // Before the page's document exists, evaluating may fail: that is "not yet".
      if (await this.evaluate<boolean>(expression).catch(() => false)) return;
      if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
      await new Promise((ok) => setTimeout(ok, 100));
    }
  }

  async close(): Promise<void> {
    await this.chrome.send('Target.closeTarget', { targetId: this.targetId });
  }
}

function parseArgs(args: string[]): {
  json: boolean;
  backends: BrowserBackend[];
  seconds: number;
  rounds: number;
} {
  const value = (flag: string) => {
    const i = args.indexOf(flag);
    return i >= 0 ? args[i + 1] : undefined;
  };
  const backends = (value('--backends') ?? 'webgpu,wasm').split(',').filter(Boolean);
  for (const b of backends) {
    if (b !== 'webgpu' && b !== 'wasm') throw new Error(`--backends takes webgpu and/or wasm, not "${b}"`);
  }
  const seconds = Number(value('--seconds') ?? 10);
  if (!(seconds > 0)) throw new Error('--seconds must be a positive number');
  const rounds = Number(value('--rounds') ?? 2);
  if (!Number.isInteger(rounds) || rounds < 1) throw new Error('--rounds must be an integer >= 1');
  return { json: args.includes('--json'), backends: backends as BrowserBackend[], seconds, rounds };
}

function itemsOf(model: ModelInfo, dims: Record<string, number[]>, n: number, seed: number): NamedItem[] {
  const m = { ...model, calibration: { ...model.calibration, dims } };
  return Array.from({ length: n }, (_, i) => ({
    name: `b${seed + i}`,
    tensors: calibrationInputs(m, seed + i),
  }));
}

/**
 * Creates, fills and seals a job through the hub's REST API, with `requirements` if given (which
 * workers may run it); returns its id.
 */
export async function submit(
  hub: HubServer,
  model: string,
  items: NamedItem[],
  requirements?: JobRequirements,
): Promise<string> {
  const call = async (method: string, path: string, body?: BodyInit, type?: string) => {
    const res = await fetch(hub.url + path, {
      method,
      headers: {
        authorization: `Bearer ${hub.tokens.operatorToken}`,
        ...(type ? { 'content-type': type } : {}),
      },
      body,
    });
    if (!res.ok) throw new Error(`${method} ${path}: HTTP ${res.status} ${await res.text()}`);
    return (await res.json()) as { data: { id: string } };
  };
  // The result cache off: each backend runs the same inputs, and each must run them.
  const job = await call(
    'POST',
    '/api/jobs',
    JSON.stringify({ model, requirements, cache: false }),
    'application/json',
  );
  const id = job.data.id;
  for (let i = 0; i < items.length; i += 100) {
    const packed = packItems(items.slice(i, i + 100));
    await call('POST', `/api/jobs/${id}/items`, packed.slice().buffer, 'application/octet-stream');
  }
  await call('POST', `/api/jobs/${id}/seal`);
  return id;
}

/** Waits for a job to complete; returns its items/s from first assignment to last result. */
async function runJob(hub: HubServer, model: string, items: NamedItem[]): Promise<number> {
  const id = await submit(hub, model, items);
  const job = await until(
    `job ${id} completed`,
    async () => {
      const j = await hub.hub.jobs.get(id);
      return j?.state === 'completed' ? j : undefined;
    },
    15 * 60_000,
    20,
  );
  if (job.startedAt === null || job.finishedAt === null)
    throw new Error(`job ${id} has no start or finish time`);
  return (items.length * 1000) / Math.max(1, job.finishedAt - job.startedAt);
}

async function openContributor(browser: Chromium, hub: HubServer, backend: BrowserBackend): Promise<Tab> {
  const page = await browser.open(`${hub.url}/?autostart=1&debug=1&backend=${backend}`);
  await page.waitFor(`the ${backend} page to register`, 'window.shardhub?.stats()?.registered === true');
  const info = await page.evaluate<EngineInfo | undefined>('window.shardhub?.engineInfo()');
  if (info?.backend !== backend) throw new Error(`the page runs ${info?.backend}, not ${backend}`);
  return page;
}

async function benchBackend(
  browser: Chromium,
  hub: HubServer,
  c: Case,
  seconds: number,
  rounds: number,
  note: (s: string) => void,
): Promise<BrowserBackendResult> {
  const model = hub.hub.models.byName(c.model);
  if (!model) throw new Error(`model ${c.model} is not in the registry (npm run models)`);

  // Grid: the contributor page as the only worker; warmed up once (download, session, benchmark).
  const page = await openContributor(browser, hub, c.backend);
  const threads = (await page.evaluate<number | undefined>('window.shardhub?.engineInfo()?.numThreads')) ?? 1;
  const warmRate = await runJob(hub, c.model, itemsOf(model, c.dims, c.warmup, 1));
  const n = Math.max(c.warmup, Math.round(warmRate * seconds));
  note(`${c.backend}: warm-up ${warmRate.toFixed(1)} items/s; measuring ${n} items, ${rounds} round(s)`);

  // Standalone: the same browser, onnxruntime-web alone, same inputs, batch and threads. The
  // contributor page stays open meanwhile, idle. Rounds alternate; each side keeps its best round,
  // so a burst of load from elsewhere on the machine penalizes neither.
  const alone = await browser.open(`${hub.url}/standalone.html`);
  await alone.waitFor('standalone.html', "typeof window.shardhubStandalone === 'function'");
  const request = { model, backend: c.backend, numThreads: threads, dims: c.dims, minMs: seconds * 1000 };
  let grid = 0;
  let standalone = 0;
  for (let r = 0; r < rounds; r++) {
    const g = await runJob(hub, c.model, itemsOf(model, c.dims, n, 100_000 * (r + 1)));
    const result = await alone.evaluate<StandaloneResult>(
      `window.shardhubStandalone(${JSON.stringify(request)})`,
    );
    note(
      `${c.backend} round ${r + 1}: grid ${g.toFixed(2)}, standalone ${result.itemsPerSec.toFixed(2)} items/s`,
    );
    grid = Math.max(grid, g);
    standalone = Math.max(standalone, result.itemsPerSec);
  }
  await alone.close();
  await page.close();
  return {
    row: {
      backend: c.backend,
      grid_items_per_s: grid,
      standalone_items_per_s: standalone,
      ratio: grid / standalone,
    },
    model: c.model,
    item: Object.entries(c.dims)
      .map(([k, d]) => `${k}[${d.join(',')}]`)
      .join(' '),
    threads,
    items: n,
  };
}

interface BrowserBackendResult {
  row: BrowserBenchRow;
  model: string;
  item: string;
  threads: number;
  items: number;
}

/** Runs the benchmark; see the file comment. */
export async function main(args: string[]): Promise<void> {
  const opts = parseArgs(args);
  const dist = join(ROOT, 'dist', 'client');
  if (!existsSync(join(dist, 'standalone.html'))) throw new Error('build the pages first: npm run build');
  if (!existsSync(CHROMIUM))
    throw new Error(`no Chromium at ${CHROMIUM} (apt-get install chromium, or set CHROMIUM_PATH)`);
  const note = (s: string) => process.stderr.write(`${s}\n`);
  const { hub, done } = await benchHub({
    staticDir: dist,
    hub: { preflight: false, trust: { ...DEFAULT_TRUST_OPTIONS, trustAfter: 0, spotCheck: 0 } },
  });
  const browser = await Chromium.launch();
  const results: BrowserBackendResult[] = [];
  try {
    for (const b of opts.backends)
      results.push(await benchBackend(browser, hub, CASES[b], opts.seconds, opts.rounds, note));
  } finally {
    await browser.close();
    await done();
  }
  if (opts.json) {
    process.stdout.write(`${JSON.stringify(results.map((r) => r.row))}\n`);
    return;
  }
  printTable(
    results.map((r) => ({
      backend: r.row.backend,
      model: r.model,
      item: r.item,
      threads: r.threads,
      items: r.items,
      grid_items_per_s: r.row.grid_items_per_s,
      standalone_items_per_s: r.row.standalone_items_per_s,
      ratio: r.row.ratio,
    })),
  );
}
