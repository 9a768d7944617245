/**
 * `npm run bench -- trust [--json] [--jobs 3] [--items 4000] [--item-ms 2]`
 *
 * An open grid under attack (issue 18): 4 honest native sim nodes (`native/main.ts --backend sim`,
 * `--item-ms` per item) on the noop model (y = x), with
 * - a subtle liar: a native node (join token) honest for its first 300 items, then scaling one
 *   output element by 1.05 on 5% of items;
 * - a liar on every item: a native node;
 * - two anonymous failure-reporters: browser tabs claiming 1e6 items/s and concurrency 256 that
 *   answer every item with a failure report.
 * The hostile workers are clients of our own (`_hostile.ts`), paced like the honest nodes. Three
 * jobs of `--items` items run one after the other with the hub's default trust options.
 *
 * Per job and in total: `corrupted_ever` (a liar's corrupted result stored at any moment, polled
 * every 100 ms; a result of the every-item liar counts once it is stored), `corrupted_end` (present
 * when everything has settled; goal 0), `failed` (goal 0), liars quarantined (goal: all 4),
 * honest workers quarantined (goal 0), and verification's extra runs as a share of the items:
 * replicas (probation, spot checks), reference runs, and results recomputed after a quarantine
 * (goal: below 15%). Baseline, in the same run: the same jobs on the honest nodes alone
 * (`honest only` row), whose extra runs are the cost of verification with no attacker.
 * The hub's memory: its process's RSS (the hub runs in this process; the nodes are children) at
 * the start of each job, at its peak (sampled every 100 ms) and at the end; in the total row, the
 * whole run's, the end after every job has settled. The honest-only rows are the baseline.
 *
 * `npm run bench -- trust --catch N [--items 20000]`: how fast the subtle liar is caught, over N
 * trials. Each trial is a fresh hub with 4 honest sim nodes and the subtle liar as a real native
 * node (`native/fault.ts`: `--corrupt-rate 0.05 --corrupt-after 300 --corrupt-scale 1.05`, as in
 * the soak), and one job of `--items` items. Per trial: seconds from the job's start to the liar's
 * first strike and to its quarantine, the liar's accepted results then (its first 300 are honest),
 * the results the quarantine took back (what it had stored unconfirmed), and the strikes on
 * record; then the distribution of the quarantine times and of the liar's results by then.
 * A trial whose job completes before the liar is caught says so (`caught_s`: null).
 */
import { join } from 'node:path';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import type { ChildProcess } from 'node:child_process';
import { packTensors, unpackTensors } from '../protocol/pack.ts';
import { compareTensors } from '../protocol/tensor.ts';
import type { HubServer } from '../server/app.ts';
import { calibrationInputs } from '../worker/calibration.ts';
import { benchHub, printTable, spawnNode, until } from './_grid.ts';
import { failureReporter, liar, type Hostile } from './_hostile.ts';
import { numFlag, percentile } from './_scale.ts';
import { openJob } from '../test/helpers/store-rows.ts';

interface Row {
  run: string;
  job: string;
  items: number;
  seconds: number;
  corrupted_ever: number;
  corrupted_end: number;
  failed: number;
  liars_quarantined: string;
  /** The hostile workers still free (goal: none). */
  liars_free: string;
  honest_quarantined: number;
  replicas: number;
  reference: number;
  recomputed: number;
  extra_runs_pct: number;
  rss_start_mb: number;
  peak_rss_mb: number;
  rss_end_mb: number;
}

const mb = (bytes: number) => Math.round(bytes / 2 ** 20);

/** The hostile workers not quarantined, by name ('-' when none). */
const freeOf = (hostile: readonly Hostile[], hub: HubServer) =>
  hostile
    .filter((h) => !hub.hub.trust.isQuarantined(h.id))
    .map((h) => h.id)
    .join(' ') || '-';

async function submit(hub: HubServer, n: number, seed: number): Promise<string> {
  const model = hub.hub.models.byName('noop');
  if (!model) throw new Error('model noop missing: run `npm run models`');
  const job = await hub.hub.createJob(openJob('noop'));
  for (let i = 0; i < n; i += 1000) {
    const rows = [];
    for (let k = i; k < Math.min(n, i + 1000); k++)
      rows.push({ name: `i${k}`, inputs: packTensors(calibrationInputs(model, seed + k)) });
    await hub.hub.appendItems(job.id, rows);
  }
  await hub.hub.sealJob(job.id);
  return job.id;
}

/** Items of a job whose stored result differs from its input (y = x), by a scan of the store. */
async function wrongResults(hub: HubServer, jobId: string): Promise<number> {
  let wrong = 0;
  const model = hub.hub.models.byName('noop');
  for await (const r of hub.hub.jobs.results(jobId)) {
    const y = unpackTensors(r.outputs)[0];
    const x = (await hub.hub.jobs.inputs([r.itemId])).get(r.itemId);
    const xt = x && unpackTensors(x)[0];
    if (!y || !xt || !model || compareTensors({ ...y, name: xt.name }, xt, model.tolerance)) wrong++;
  }
  return wrong;
}

async function runGrid(withAttackers: boolean, jobs: number, items: number, itemMs: number): Promise<Row[]> {
  const { hub, done } = await benchHub();
  const state = mkdtempSync(join(tmpdir(), 'shardhub-trust-'));
  const nodes: ChildProcess[] = [];
  const hostile: Hostile[] = [];
  const rows: Row[] = [];
  try {
    for (let i = 0; i < 4; i++)
      nodes.push(spawnNode(hub, join(state, `n${i}`), ['--backend', 'sim', '--item-ms', String(itemMs)]));
    await until(
      'honest nodes online',
      () => [...hub.hub.workers.values()].filter((w) => w.state === 'online').length >= 4,
      120_000,
      50,
    );
    const honest = new Set(hub.hub.workers.keys());
    const ips = 1000 / itemMs;
    if (withAttackers) {
      const token = hub.tokens.joinToken;
      hostile.push(
        await liar(hub.url, 'subtle-liar-node', { rate: 0.05, after: 300, token, itemsPerSec: ips }),
      );
      hostile.push(await liar(hub.url, 'every-item-liar-node', { rate: 1, token, itemsPerSec: ips }));
      hostile.push(await failureReporter(hub.url, 'failure-reporter-tab-1'));
      hostile.push(await failureReporter(hub.url, 'failure-reporter-tab-2'));
    }
    const ever = new Set<number>();
    const runStart = process.memoryUsage.rss();
    let runPeak = runStart;
    let jobPeak = runStart;
    let polling = false;
    const poll = setInterval(() => {
      const rss = process.memoryUsage.rss();
      runPeak = Math.max(runPeak, rss);
      jobPeak = Math.max(jobPeak, rss);
      if (polling) return;
      polling = true;
      void (async () => {
        for (const h of hostile)
          for (const id of h.corrupted)
            if (!ever.has(id) && (await hub.hub.jobs.result(id))?.workerId === h.id) ever.add(id);
      })().finally(() => (polling = false));
    }, 100);
    const cost = hub.hub.verificationCost;
    const ids: string[] = [];
    try {
      for (let j = 0; j < jobs; j++) {
        const before = { ...cost, ever: ever.size };
        const jobStart = process.memoryUsage.rss();
        jobPeak = jobStart;
        const started = Date.now();
        const jobId = await submit(hub, items, 1 + j * 1_000_000);
        ids.push(jobId);
        await until(
          `job ${j + 1} completed`,
          async () => (await hub.hub.jobs.get(jobId))?.state === 'completed',
          600_000,
          20,
        );
        const seconds = (Date.now() - started) / 1000;
        const rec = await hub.hub.jobs.get(jobId);
        const extra = cost.replicas - before.replicas + cost.reference - before.reference;
        rows.push({
          run: withAttackers ? 'attacked' : 'honest only',
          job: String(j + 1),
          items,
          seconds,
          corrupted_ever: ever.size - before.ever,
          corrupted_end: await wrongResults(hub, jobId),
          failed: rec?.failedCount ?? 0,
          liars_quarantined: `${hostile.filter((h) => hub.hub.trust.isQuarantined(h.id)).length}/${hostile.length}`,
          liars_free: freeOf(hostile, hub),
          honest_quarantined: [...honest].filter((id) => hub.hub.trust.isQuarantined(id)).length,
          replicas: cost.replicas - before.replicas,
          reference: cost.reference - before.reference,
          recomputed: cost.recomputed - before.recomputed,
          extra_runs_pct: (100 * (extra + cost.recomputed - before.recomputed)) / items,
          rss_start_mb: mb(jobStart),
          peak_rss_mb: mb(jobPeak),
          rss_end_mb: mb(process.memoryUsage.rss()),
        });
      }
      // Settle: a liar caught late reopens completed jobs; they must complete again.
      await until(
        'every job completed again',
        async () =>
          (await Promise.all(ids.map((id) => hub.hub.jobs.get(id)))).every((j) => j?.state === 'completed'),
        600_000,
        50,
      );
    } finally {
      clearInterval(poll);
    }
    let endWrong = 0;
    let failed = 0;
    for (const id of ids) {
      endWrong += await wrongResults(hub, id);
      failed += (await hub.hub.jobs.get(id))?.failedCount ?? 0;
    }
    const extra = cost.replicas + cost.reference + cost.recomputed;
    rows.push({
      run: withAttackers ? 'attacked' : 'honest only',
      job: 'total',
      items: items * jobs,
      seconds: rows.reduce((s, r) => s + r.seconds, 0),
      corrupted_ever: ever.size,
      corrupted_end: endWrong,
      failed,
      liars_quarantined: `${hostile.filter((h) => hub.hub.trust.isQuarantined(h.id)).length}/${hostile.length}`,
      liars_free: freeOf(hostile, hub),
      honest_quarantined: [...honest].filter((id) => hub.hub.trust.isQuarantined(id)).length,
      replicas: cost.replicas,
      reference: cost.reference,
      recomputed: cost.recomputed,
      extra_runs_pct: (100 * extra) / (items * jobs),
      rss_start_mb: mb(runStart),
      peak_rss_mb: mb(runPeak),
      rss_end_mb: mb(process.memoryUsage.rss()),
    });
    return rows;
  } finally {
    for (const h of hostile) h.close();
    for (const n of nodes) n.kill('SIGKILL');
    await done();
    rmSync(state, { recursive: true, force: true });
  }
}

interface CatchRow {
  trial: number;
  first_strike_s: number | null;
  caught_s: number | null;
  /** The liar's accepted results (its first 300 honest) at its first strike and its quarantine. */
  liar_results_at_strike: number | null;
  liar_results_at_caught: number | null;
  recomputed: number;
  strikes: number;
  job_s: number;
}

/** One trial of `--catch`; see the file comment. */
async function catchTrial(trial: number, items: number, itemMs: number): Promise<CatchRow> {
  const { hub, done } = await benchHub();
  const state = mkdtempSync(join(tmpdir(), 'shardhub-catch-'));
  const nodes: ChildProcess[] = [];
  const liarId = 'subtle-liar-node';
  try {
    const sim = ['--backend', 'sim', '--item-ms', String(itemMs)];
    for (let i = 0; i < 4; i++) nodes.push(spawnNode(hub, join(state, `n${i}`), sim));
    nodes.push(
      spawnNode(hub, join(state, 'liar'), [
        ...sim,
        '--id',
        liarId,
        '--corrupt-rate',
        '0.05',
        '--corrupt-after',
        '300',
        '--corrupt-scale',
        '1.05',
      ]),
    );
    await until(
      'nodes online',
      () => [...hub.hub.workers.values()].filter((w) => w.state === 'online').length >= 5,
      120_000,
      50,
    );
    const started = Date.now();
    const jobId = await submit(hub, items, 1 + trial * 1_000_000);
    let firstStrike: number | null = null;
    let caught: number | null = null;
    let atStrike: number | null = null;
    let atCaught: number | null = null;
    await until(
      'the liar caught or the job completed',
      async () => {
        const r = hub.hub.trust.record(liarId);
        const s = (Date.now() - started) / 1000;
        const results = hub.hub.workers.get(liarId)?.itemsDone ?? 0;
        if (r.strikes > 0 && firstStrike === null) [firstStrike, atStrike] = [s, results];
        if (r.quarantined && caught === null) [caught, atCaught] = [s, results];
        return caught !== null || (await hub.hub.jobs.get(jobId))?.state === 'completed';
      },
      600_000,
      20,
    );
    const row = {
      trial,
      first_strike_s: firstStrike,
      caught_s: caught,
      liar_results_at_strike: atStrike,
      liar_results_at_caught: atCaught,
      recomputed: hub.hub.verificationCost.recomputed,
      strikes: hub.hub.trust.record(liarId).strikes,
      job_s: 0,
    };
    // Settled before the hub closes: the quarantine's recomputation and reference runs end with it.
    await until(
      'the job completed',
      async () => (await hub.hub.jobs.get(jobId))?.state === 'completed',
      600_000,
      50,
    );
    row.job_s = (Date.now() - started) / 1000;
    return row;
  } finally {
    for (const n of nodes) n.kill('SIGKILL');
    await done();
    rmSync(state, { recursive: true, force: true });
  }
}

/** `--catch N`: N trials of `catchTrial`, then the distribution of the quarantine times. */
async function catchBench(args: string[], trials: number): Promise<void> {
  const items = numFlag(args, 'items', 20_000);
  const itemMs = numFlag(args, 'item-ms', 2);
  const rows: CatchRow[] = [];
  for (let t = 0; t < trials; t++) {
    rows.push(await catchTrial(t + 1, items, itemMs));
    if (!args.includes('--json')) process.stderr.write(`${JSON.stringify(rows.at(-1))}\n`);
  }
  const times = rows
    .map((r) => r.caught_s)
    .filter((s): s is number => s !== null)
    .sort((a, b) => a - b);
  const results = rows
    .map((r) => r.liar_results_at_caught)
    .filter((n): n is number => n !== null)
    .sort((a, b) => a - b);
  const summary = {
    trials,
    caught: times.length,
    p50_s: times.length ? percentile(times, 50) : null,
    p90_s: times.length ? percentile(times, 90) : null,
    max_s: times.length ? Math.max(...times) : null,
    liar_results_p50: results.length ? percentile(results, 50) : null,
    liar_results_p90: results.length ? percentile(results, 90) : null,
    liar_results_max: results.length ? Math.max(...results) : null,
  };
  if (args.includes('--json'))
    process.stdout.write(
      `${JSON.stringify({ bench: 'trust-catch', items, itemMs, rows, summary }, null, 2)}\n`,
    );
  process.stdout.write(
    `trust --catch: the subtle liar (native/fault.ts, x1.05 on 5% after 300 items) among 4 honest sim nodes (${itemMs} ms/item), one job of ${items} items per trial\n\n`,
  );
  printTable(rows as unknown as Record<string, unknown>[]);
  process.stdout.write(`\n${JSON.stringify(summary)}\n`);
}

export async function main(args: string[]): Promise<void> {
  const json = args.includes('--json');
  const trials = numFlag(args, 'catch', 0);
  if (trials > 0) return catchBench(args, trials);
  const jobs = numFlag(args, 'jobs', 3);
  const items = numFlag(args, 'items', 4000);
  const itemMs = numFlag(args, 'item-ms', 2);
  const rows = [
    ...(await runGrid(false, jobs, items, itemMs)),
    ...(await runGrid(true, jobs, items, itemMs)),
  ];
  if (json)
    process.stdout.write(`${JSON.stringify({ bench: 'trust', jobs, items, itemMs, rows }, null, 2)}\n`);
  process.stdout.write(
    `trust: ${jobs} jobs of ${items} noop items on 4 honest sim nodes (${itemMs} ms/item); attacked: + a subtle liar (x1.05 on 5% after 300 items), an every-item liar, 2 anonymous failure-reporters\n\n`,
  );
  printTable(rows as unknown as Record<string, unknown>[]);
  process.stdout.write(
    `\ncorrupted_ever: liars' corrupted results stored at any moment; corrupted_end: wrong results in the store once settled (goal 0); extra_runs_pct: (replicas + reference runs + results recomputed after a quarantine) / items (goal < 15%); *_rss_mb: the hub process's RSS at the start, peak and end (honest only: the baseline).\n`,
  );
}
