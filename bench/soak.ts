/**
 * `npm run bench -- soak [--json] [--seconds 60] [--nodes 6] [--seed 1]
 *   [--store sqlite|postgres|postgres://…] [--hubs 2] [--scale 1]`
 *
 * Chaos against a real grid: the hub runs as its own process on a fixed port; native nodes run
 * the real mlp-small model with onnxruntime-node. Two of them lie (`native/fault.ts`): a blatant
 * liar corrupts every output, and a subtle one answers its first 300 items honestly (it passes
 * probation; 300 × `--scale`, at least 30, on scaled jobs), then multiplies one output element by
 * 1.05 on 5% of items, which only spot checks and canaries can catch. For the given time, at random: nodes are SIGKILLed and restarted (same
 * identity; a restarted subtle liar is honest for 300 items again), nodes are evicted from the
 * server side, nodes are stalled (SIGSTOP for a while, then SIGCONT), the hub is killed with -9 and
 * restarted on the same data dir, new jobs are submitted concurrently, and bursts of hostile socket
 * messages and REST requests arrive. Then every job is awaited and the store is audited:
 * - `lost`: an item sent that is missing from the store or still pending in a completed job;
 * - `done_without_result`, `result_not_done`: an item's `done` state against its result row (the
 *   two must agree: a result is stored in the same transaction that marks its item done);
 * - `counters_off`: jobs whose done and failed counters differ from their items' states;
 * - `corrupted_accepted`: results that differ from a standalone onnxruntime-node reference beyond
 *   the model's tolerance.
 * All of these must be 0. It also says when each liar was quarantined (seconds from the start,
 * polled every 500 ms; `null`: never).
 *
 * `--store postgres` runs the same soak on several hubs (`--hubs`, default 2) sharing a PostgreSQL
 * database: a server started for the soak (`test/helpers/postgres.ts`), or a fresh database on the
 * server of a `postgres://` URL, dropped afterwards. Each node is given every hub's URL (its own
 * first); the hub kills pick a hub at random, which restarts under a new hub id, so a live hub must
 * reap the dead one (lease 3 s) before its chunks run again. REST requests go to a live hub. The
 * audit reads the store through its own interface (`AsyncStore`: `PgStore` or `SqliteAsyncStore`),
 * the same figures for both. With SHARDHUB_SOAK_KEEP_DB=1 a run that failed or lost items keeps
 * its database, to read its rows. `--scale` multiplies every job's size (Postgres hubs commit fewer
 * items per second than a SQLite hub; the test uses it to stay short).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { io as connect } from 'socket.io-client';
import { packItems, unpackTensors, type NamedItem } from '../protocol/pack.ts';
import { shardhubParser } from '../protocol/socket-parser.ts';
import { compareTensors } from '../protocol/tensor.ts';
import { HUB_NODE_FLAGS } from '../server/node-flags.ts';
import type { AsyncStore } from '../server/store/async-store.ts';
import { PgStore } from '../server/store/pg-store.ts';
import { SqliteAsyncStore } from '../server/store/sqlite-async-store.ts';
import type { ItemRecord } from '../server/store/store.ts';
import { calibrationInputs } from '../worker/calibration.ts';
import { Reference, freePort, serveArgs } from '../test/helpers/grid.ts';
import { ROOT, printTable } from './_grid.ts';
import { failureReporter, type Hostile } from './_hostile.ts';
import { NODE_V8_FLAGS, nodeEnv } from '../native/launch.ts';
import { createDatabase, startPostgres } from '../test/helpers/postgres.ts';

function arg(args: string[], name: string, dflt: number): number {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? Number(args[i + 1]) : dflt;
}

function textArg(args: string[], name: string): string | undefined {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : undefined;
}

/** A small deterministic PRNG so a soak can be replayed with --seed. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const sleep = (ms: number) => new Promise((ok) => setTimeout(ok, ms));

async function req(
  url: string,
  token: string | undefined,
  method: string,
  path: string,
  body?: unknown,
  raw?: Uint8Array,
): Promise<{ status: number; json: any }> {
  try {
    const res = await fetch(url + path, {
      method,
      headers: {
        ...(token ? { Authorization: `Bearer ${token}` } : {}),
        ...(raw
          ? { 'Content-Type': 'application/octet-stream' }
          : body !== undefined
            ? { 'Content-Type': 'application/json' }
            : {}),
      },
      body: raw ? raw.slice() : body !== undefined ? JSON.stringify(body) : undefined,
    });
    return { status: res.status, json: await res.json().catch(() => undefined) };
  } catch {
    return { status: 0, json: undefined }; // the hub is down (being restarted)
  }
}

/** What a soak found. */
export interface SoakResult {
  store: 'sqlite' | 'postgres';
  hubs: number;
  worker_kills: number;
  worker_evictions: number;
  worker_stalls: number;
  hub_restarts: number;
  hostile_messages: number;
  jobs: number;
  seconds: number;
  nodes: number;
  liars: number;
  /** Anonymous tabs failing every item (each hub start); `failed` must stay 0 all the same. */
  failure_reporters: number;
  failure_reporters_quarantined: number;
  /** When the liars were quarantined, in seconds from the soak's start (`null`: never). */
  liar_quarantined_at_s: number | null;
  subtle_liar_quarantined_at_s: number | null;
  /**
   * Results the hub accepted from the subtle liar over the soak (its lifetime count, reverted ones
   * included) and the checks it failed: whether it got past its honest items and was caught lying.
   */
  subtle_liar_items_done: number;
  subtle_liar_strikes: number;
  items: number;
  failed: number;
  lost: number;
  /** Per job with lost items: how many were missing from the store and how many left pending. */
  lost_by_job: {
    job: string;
    /** The job's state at the audit. */
    state: string;
    items: number;
    stored: number;
    missing: number;
    pending: number;
  }[];
  done_without_result: number;
  result_not_done: number;
  counters_off: number;
  corrupted_accepted: number;
}

/** `npm run bench -- soak`: runs a soak and prints what it found. */
export async function main(args: string[]): Promise<void> {
  const json = args.includes('--json');
  const store = textArg(args, 'store') ?? 'sqlite';
  if (store !== 'sqlite' && store !== 'postgres' && !/^postgres(ql)?:\/\//.test(store))
    throw new Error('--store must be sqlite, postgres or a postgres:// URL');
  const result = await runSoak({
    seconds: arg(args, 'seconds', 60),
    nodes: arg(args, 'nodes', 6),
    seed: arg(args, 'seed', 1),
    quiet: json,
    failureReporters: !args.includes('--no-failure-reporters'),
    store,
    hubs: arg(args, 'hubs', 2),
    scale: arg(args, 'scale', 1),
  });
  if (json) process.stdout.write(`${JSON.stringify(result)}\n`);
  else
    printTable(
      Object.entries(result).map(([figure, value]) => ({
        figure,
        value: typeof value === 'object' && value !== null ? JSON.stringify(value) : value,
      })),
    );
}

/** Options of {@link runSoak}. */
export interface SoakOptions {
  seconds: number;
  nodes: number;
  seed: number;
  quiet: boolean;
  /** Two anonymous failure-reporters join every hub start (the bench's default; off unless set). */
  failureReporters?: boolean;
  /** `sqlite` (one hub, the default), `postgres` (a server started here) or a `postgres://` URL. */
  store?: string;
  /** Hubs on Postgres (default 2; SQLite has one). */
  hubs?: number;
  /** Multiplies every job's size (default 1). */
  scale?: number;
}

/**
 * Runs chaos for `seconds`, waits for every job, audits the store. Whatever happens, the processes
 * it started are killed and a Postgres database or server it made is removed.
 */
export async function runSoak(opts: SoakOptions): Promise<SoakResult> {
  const children = new Set<ChildProcess>();
  let pgServer: { stop: () => Promise<void> } | undefined;
  let database: { url: string; drop: () => Promise<void> } | undefined;
  try {
    // Postgres: a fresh database on a server started here or on the one given.
    if ((opts.store ?? 'sqlite') !== 'sqlite') {
      let server = opts.store as string;
      if (server === 'postgres') {
        const started = await startPostgres();
        if ('skip' in started) throw new Error(started.skip);
        pgServer = started;
        server = started.url;
      }
      database = await createDatabase(server, 'shardhub_soak');
    }
    let ok = false;
    try {
      const result = await soak(opts, database?.url, children);
      ok = result.lost === 0;
      return result;
    } finally {
      // SHARDHUB_SOAK_KEEP_DB=1: a run that lost items or failed keeps its database, to read its rows.
      if (process.env.SHARDHUB_SOAK_KEEP_DB && !ok && database) {
        process.stderr.write(`soak: database kept at ${database.url}\n`);
        database = undefined;
      }
    }
  } finally {
    for (const c of children) c.kill('SIGKILL');
    await Promise.all(
      [...children].map((c) =>
        c.exitCode !== null || c.signalCode !== null ? undefined : new Promise((ok) => c.once('exit', ok)),
      ),
    );
    await database?.drop();
    await pgServer?.stop();
  }
}

/** The soak itself, on SQLite or on the Postgres database at `pgUrl`; every process it starts goes in `children`. */
async function soak(
  opts: SoakOptions,
  pgUrl: string | undefined,
  children: Set<ChildProcess>,
): Promise<SoakResult> {
  const json = opts.quiet;
  const seconds = opts.seconds;
  const nodeCount = opts.nodes;
  const random = prng(opts.seed);
  const scale = opts.scale ?? 1;
  if (!(scale > 0)) throw new RangeError('scale must be a number > 0');
  const onPg = pgUrl !== undefined;
  const hubCount = onPg ? (opts.hubs ?? 2) : 1;
  if (!Number.isInteger(hubCount) || hubCount < 1) throw new RangeError('hubs must be a positive integer');
  const dir = mkdtempSync(join(tmpdir(), 'shardhub-soak-'));
  const hubs: { proc?: ChildProcess; url: string; data: string; port: number; up: boolean }[] = [];
  for (let i = 0; i < hubCount; i++) {
    const port = await freePort();
    hubs.push({ port, url: `http://127.0.0.1:${port}`, data: join(dir, `hub${i}`), up: false });
  }
  /** A hub that is up (the first one on SQLite), for REST requests. */
  const liveUrl = (): string => {
    const up = hubs.filter((h) => h.up);
    return (up[Math.floor(Math.random() * up.length)] ?? hubs[0])!.url;
  };
  // On Postgres every hub is given the tokens (on SQLite the hub makes them, in tokens.json).
  const pgTokens = {
    operatorToken: `op_soak-${randomBytes(16).toString('hex')}`,
    joinToken: `join_soak-${randomBytes(16).toString('hex')}`,
  };
  const log = (m: string) => {
    if (!json) process.stderr.write(`[soak ${((Date.now() - t0) / 1000).toFixed(1)}s] ${m}\n`);
  };
  const t0 = Date.now();
  const counts = {
    worker_kills: 0,
    worker_evictions: 0,
    worker_stalls: 0,
    hub_restarts: 0,
    hostile_messages: 0,
    jobs: 0,
  };

  const startHub = async (i: number) => {
    const h = hubs[i]!;
    const extra = pgUrl
      ? [
          '--store',
          pgUrl,
          '--operator-token',
          pgTokens.operatorToken,
          '--join-token',
          pgTokens.joinToken,
          '--lease-ms',
          '3000',
        ]
      : [];
    const hub = spawn(
      process.execPath,
      [
        // The hub's flags: without them it would run itself again in a child, and the soak's kills
        // would reach only the parent.
        ...HUB_NODE_FLAGS,
        '--import',
        'tsx',
        join(ROOT, 'server/cli.ts'),
        ...serveArgs(h.port, h.data, extra),
      ],
      {
        cwd: ROOT,
        stdio: ['ignore', 'pipe', 'pipe'],
        env: { ...process.env, SHARDHUB_LOG_LEVEL: 'error' },
      },
    );
    let out = '';
    hub.stdout?.on('data', (d: Buffer) => (out += d.toString()));
    hub.stderr?.on('data', (d: Buffer) => (out += d.toString()));
    // 90 s: on a loaded machine a hub on Postgres takes a while to load and migrate.
    const end = Date.now() + 90_000;
    h.proc = hub;
    children.add(hub);
    hub.once('exit', () => children.delete(hub));
    while (!out.includes('hub is up')) {
      if (Date.now() > end || hub.exitCode !== null)
        throw new Error(`hub ${i} did not start; it said:\n${out.slice(-2000)}`);
      await sleep(50);
    }
    h.up = true;
    // Two anonymous failure-reporters (`_hostile.ts`) join every hub that starts: each answers every
    // item it gets with a failure report. None of their reports may fail an item.
    for (const h of reporters.splice(0)) h?.close();
    // Not awaited: joining must not delay the chaos.
    for (let k = 0; k < (opts.failureReporters ? 2 : 0); k++)
      void failureReporter(h.url, `soak-failure-reporter-${k}`).then(
        (h) => reporters.push(h),
        () => undefined,
      );
  };
  const reporters: (Hostile | undefined)[] = [];
  for (let i = 0; i < hubCount; i++) await startHub(i);
  const tokens = pgUrl
    ? pgTokens
    : (JSON.parse(readFileSync(join(hubs[0]!.data, 'tokens.json'), 'utf8')) as {
        operatorToken: string;
        joinToken: string;
      });
  const op = tokens.operatorToken;

  type Liar = 'blatant' | 'subtle' | undefined;
  const nodes: { proc: ChildProcess; liar: Liar; i: number; stopped: boolean }[] = [];
  const restarts: ReturnType<typeof setTimeout>[] = [];
  // The liars' worker ids, fixed so their quarantine can be looked up.
  const liarIds = { blatant: 'soak-blatant-liar', subtle: 'soak-subtle-liar' };
  const lies = {
    blatant: ['--corrupt-rate', '1'],
    // Its honest stretch scales with the jobs: on quarter-size jobs 300 honest items are most of what
    // it runs, and the jobs could end before spot checks catch it twice (quarantine, which takes its
    // lies back), leaving the lies it told accepted.
    subtle: [
      '--corrupt-rate',
      '0.05',
      '--corrupt-after',
      String(Math.max(30, Math.round(300 * scale))),
      '--corrupt-scale',
      '1.05',
    ],
  };
  const startNode = (i: number, liar: Liar) => {
    const proc = spawn(
      process.execPath,
      [
        '--import',
        'tsx',
        ...NODE_V8_FLAGS, // as `shardhub node` runs (native/launch.ts)
        join(ROOT, 'native/main.ts'),
        '--hub',
        // Every hub, its own first: after a lost connection the node tries the next.
        [...hubs.slice(i % hubCount), ...hubs.slice(0, i % hubCount)].map((h) => h.url).join(','),
        '--token',
        tokens.joinToken,
        '--state',
        join(dir, `n${i}`),
        '--cache',
        join(dir, 'cache'),
        '--name',
        liar ? `${liar}-liar${i}` : `node${i}`,
        ...(liar ? ['--id', liarIds[liar], ...lies[liar]] : []),
      ],
      { cwd: ROOT, stdio: 'ignore', env: nodeEnv({ ...process.env, SHARDHUB_LOG_LEVEL: 'error' }) },
    );
    nodes[i] = { proc, liar, i, stopped: false };
    children.add(proc);
    proc.once('exit', () => children.delete(proc));
  };
  if (nodeCount < 3) throw new RangeError('a soak needs at least 3 nodes: 2 liars and an honest one');
  for (let i = 0; i < nodeCount; i++)
    startNode(i, i === nodeCount - 1 ? 'blatant' : i === nodeCount - 2 ? 'subtle' : undefined);

  // When each liar is quarantined, as the hub's worker list says (while the hub is up).
  const quarantinedAt: { blatant: number | null; subtle: number | null } = { blatant: null, subtle: null };
  const watch = setInterval(() => {
    void req(liveUrl(), op, 'GET', '/api/workers?limit=1000').then((r) => {
      const workers = (r.json?.data?.workers ?? []) as { id: string; state: string }[];
      for (const kind of ['blatant', 'subtle'] as const) {
        const w = workers.find((x) => x.id === liarIds[kind]);
        if (w?.state === 'quarantined' && quarantinedAt[kind] === null) {
          quarantinedAt[kind] = (Date.now() - t0) / 1000;
          log(`the ${kind} liar is quarantined`);
        }
      }
    });
  }, 500);

  // Inputs: deterministic, so the audit can recompute every item.
  const calib = {
    inputs: [{ name: 'x', dtype: 'float32' as const, shape: ['N', 64] }],
    calibration: { dims: { x: [1, 64] }, seed: 1 },
  };
  const jobItems = new Map<string, NamedItem[]>();
  const submit = async (n: number) => {
    n = Math.max(1, Math.round(n * scale));
    const seed = 1 + counts.jobs * 100_000;
    const items = Array.from({ length: n }, (_, i) => ({
      name: `s${seed}-${i}`,
      tensors: calibrationInputs(calib, seed + i),
    }));
    for (let attempt = 0; attempt < 50; attempt++) {
      // One hub for the whole submission: a job is on every hub on Postgres, but this keeps the
      // SQLite path's meaning (the hub that went down mid-submit leaves an unsealed job).
      const url = liveUrl();
      const job = await req(url, op, 'POST', '/api/jobs', { model: 'mlp-small' });
      if (job.status !== 201) {
        await sleep(300);
        continue;
      }
      const id = job.json.data.id as string;
      let ok = true;
      for (let i = 0; i < items.length && ok; i += 500)
        ok =
          (await req(url, op, 'POST', `/api/jobs/${id}/items`, undefined, packItems(items.slice(i, i + 500))))
            .status === 201;
      if (ok && (await req(url, op, 'POST', `/api/jobs/${id}/seal`)).status === 200) {
        jobItems.set(id, items);
        counts.jobs++;
        log(`job ${id}: ${n} items`);
        return;
      }
      await sleep(300); // the hub went down mid-submit: this job stays open, unsealed; submit anew
    }
  };

  const hostileBurst = async () => {
    const url = liveUrl();
    const s = connect(`${url}/worker`, {
      auth: {
        workerId: `hostile-${counts.hostile_messages}-xxxx`,
        workerSecret: randomBytes(16).toString('hex'),
      },
      reconnection: false,
      transports: ['websocket'],
      parser: shardhubParser,
    });
    await new Promise<void>((ok) => {
      s.once('connect', () => ok());
      s.once('connect_error', () => ok());
      setTimeout(ok, 2000);
    });
    for (let i = 0; i < 100; i++) {
      counts.hostile_messages++;
      const payloads: unknown[] = [
        null,
        { results: [{ itemId: i + 1, jobId: 'x', modelSha256: 'f'.repeat(64), ms: 1, outputs: [] }] },
        'junk',
        { failures: 7 },
      ];
      s.emit(
        ['items:done', 'items:failed', 'worker:register', 'nope'][i % 4] as 'items:done',
        payloads[i % payloads.length] as never,
      );
    }
    s.close();
    for (let i = 0; i < 50; i++) {
      counts.hostile_messages++;
      await req(url, i % 2 ? 'wrong' : undefined, 'POST', '/api/jobs', { model: 'mlp-small' });
    }
  };

  // Chaos for `seconds`, with jobs submitted concurrently.
  const submissions: Promise<void>[] = [submit(20_000), submit(15_000)];
  // The chaos lasts `seconds` from here, however long the hubs took to start.
  const chaosFrom = Date.now();
  const end = chaosFrom + seconds * 1000;
  while (Date.now() < end) {
    await sleep(1000 + random() * 2000);
    // Several hubs: at least one hub is killed, by half time at the latest.
    const hubKillDue = hubCount > 1 && counts.hub_restarts === 0 && Date.now() > chaosFrom + seconds * 500;
    const r = hubKillDue ? 0.6 : random();
    const pick = nodes[Math.floor(random() * nodes.length)] as (typeof nodes)[number];
    if (r < 0.25) {
      counts.worker_kills++;
      log(`SIGKILL node ${pick.i}`);
      pick.proc.kill('SIGKILL');
      restarts.push(setTimeout(() => startNode(pick.i, pick.liar), 500 + random() * 1500));
    } else if (r < 0.4) {
      const url = liveUrl();
      const workers = (await req(url, op, 'GET', '/api/workers?online=true')).json?.data?.workers as
        { id: string }[] | undefined;
      const w = workers?.[Math.floor(random() * workers.length)];
      if (w) {
        counts.worker_evictions++;
        log(`evict ${w.id}`);
        await req(url, op, 'POST', `/api/workers/${w.id}/evict`);
      }
    } else if (r < 0.55 && !pick.stopped) {
      counts.worker_stalls++;
      log(`stall node ${pick.i}`);
      pick.stopped = true;
      pick.proc.kill('SIGSTOP');
      const p = pick.proc;
      setTimeout(
        () => {
          p.kill('SIGCONT');
          pick.stopped = false;
        },
        1000 + random() * 4000,
      );
    } else if (r < 0.7) {
      counts.hub_restarts++;
      const k = Math.floor(random() * hubCount);
      log(`kill -9 hub ${k}`);
      hubs[k]!.up = false;
      hubs[k]!.proc?.kill('SIGKILL');
      await sleep(300);
      await startHub(k);
    } else if (r < 0.85) {
      submissions.push(submit(5000 + Math.floor(random() * 10_000)));
    } else {
      log('hostile burst');
      await hostileBurst();
    }
  }
  for (const n of nodes) if (n.stopped) n.proc.kill('SIGCONT');
  await Promise.all(submissions);
  log('chaos over; waiting for every job');
  // A job that makes no progress for 2 minutes is stuck (a slow one is not: Postgres hubs are).
  // Until one pass finds every job completed: a quarantine takes back the liar's unconfirmed
  // results, which reopens a job already seen completed, to run them again.
  for (let settled = false; !settled;) {
    settled = true;
    for (const id of jobItems.keys()) {
      let seen = -1;
      let movedAt = Date.now();
      let loggedAt = 0;
      for (;;) {
        const j = (await req(liveUrl(), op, 'GET', `/api/jobs/${id}`)).json?.data as
          { state: string; done: number; failed: number; items?: number; itemCount?: number } | undefined;
        if (j?.state === 'completed') break;
        settled = false;
        const decided = (j?.done ?? 0) + (j?.failed ?? 0);
        if (decided !== seen) {
          seen = decided;
          movedAt = Date.now();
        }
        if (Date.now() - loggedAt > 10_000) {
          loggedAt = Date.now();
          log(`job ${id}: ${decided} of ${jobItems.get(id)?.length} items decided`);
        }
        if (Date.now() - movedAt > 120_000)
          throw new Error(
            `job ${id} did not complete: ${decided} of ${jobItems.get(id)?.length} items decided, none for 2 min (${JSON.stringify(j)})`,
          );
        await sleep(500);
      }
    }
  }
  clearInterval(watch);
  for (const h of reporters) h?.close();
  for (const h of hubs) h.proc?.kill('SIGKILL');
  // No node may outlive the soak: pending restarts are cancelled before the last kill.
  for (const t of restarts) clearTimeout(t);
  for (const n of nodes) n.proc.kill('SIGKILL');

  // Audit the store against a standalone reference, through the store's own interface.
  const store: AsyncStore = pgUrl
    ? await PgStore.open(pgUrl)
    : await SqliteAsyncStore.open(join(hubs[0]!.data, 'hub.sqlite'));
  const modelFile = join(ROOT, 'models/generated/mlp-small.onnx');
  const ref = await Reference.open(modelFile);
  let items = 0;
  let lost = 0;
  const lostByJob: SoakResult['lost_by_job'] = [];
  let doneWithoutResult = 0;
  let resultNotDone = 0;
  let countersOff = 0;
  let corrupted = 0;
  let failed = 0;
  let reportersQuarantined = 0;
  let subtleStrikes = 0;
  let subtleItems = 0;
  try {
    for (const k of [0, 1])
      if ((await store.trustOf(`soak-failure-reporter-${k}`))?.quarantined) reportersQuarantined++;
    // A quarantine the 500 ms watch missed (the hub was down then) still counts, at the end.
    for (const kind of ['blatant', 'subtle'] as const)
      if (quarantinedAt[kind] === null && (await store.trustOf(liarIds[kind]))?.quarantined)
        quarantinedAt[kind] = (Date.now() - t0) / 1000;
    subtleStrikes = (await store.trustOf(liarIds.subtle))?.strikes ?? 0;
    subtleItems = (await store.getWorker(liarIds.subtle))?.itemsDone ?? 0;
    for (const [id, sent] of jobItems) {
      const job = await store.getJob(id);
      items += sent.length;
      failed += job?.failedCount ?? 0;
      const stored = new Map<string, ItemRecord>();
      for (let off = 0; ; off += 1000) {
        const page = await store.listItems(id, { offset: off, limit: 1000 });
        for (const it of page) stored.set(it.name, it);
        if (page.length < 1000) break;
      }
      for (const it of sent) {
        const rec = stored.get(it.name);
        if (!rec || rec.state === 'pending') lost++;
      }
      const missing = sent.filter((it) => !stored.has(it.name)).length;
      const pending = sent.filter((it) => stored.get(it.name)?.state === 'pending').length;
      if (missing + pending > 0)
        lostByJob.push({
          job: id,
          state: job?.state ?? 'gone',
          items: sent.length,
          stored: stored.size,
          missing,
          pending,
        });
      const states = [...stored.values()];
      const done = states.filter((it) => it.state === 'done').length;
      const failedItems = states.filter((it) => it.state === 'failed').length;
      if (!job || job.doneCount !== done || job.failedCount !== failedItems) countersOff++;
      const byName = new Map(sent.map((it) => [it.name, it]));
      const withResult = new Set<number>();
      for await (const r of store.iterateResults(id)) {
        withResult.add(r.itemId);
        if (stored.get(r.name)?.state !== 'done') resultNotDone++;
        const want = (await ref.run((byName.get(r.name) as NamedItem).tensors))[0];
        const got = unpackTensors(r.outputs)[0];
        if (!want || !got || compareTensors(got, want, { atol: 1e-4, rtol: 1e-4 })) corrupted++;
      }
      for (const it of states) if (it.state === 'done' && !withResult.has(it.id)) doneWithoutResult++;
    }
  } finally {
    await ref.close();
    await store.close();
  }
  rmSync(dir, { recursive: true, force: true });
  return {
    store: pgUrl ? 'postgres' : 'sqlite',
    hubs: hubCount,
    ...counts,
    seconds,
    nodes: nodeCount,
    liars: 2,
    failure_reporters: opts.failureReporters ? 2 : 0,
    failure_reporters_quarantined: reportersQuarantined,
    liar_quarantined_at_s: quarantinedAt.blatant,
    subtle_liar_quarantined_at_s: quarantinedAt.subtle,
    subtle_liar_items_done: subtleItems,
    subtle_liar_strikes: subtleStrikes,
    items,
    failed,
    lost,
    lost_by_job: lostByJob,
    done_without_result: doneWithoutResult,
    result_not_done: resultNotDone,
    counters_off: countersOff,
    corrupted_accepted: corrupted,
  };
}
