/**
 * `npm run bench -- makespan [--json] [--items N] [--item-ms C] [--rows R] [--scenario a,b] [--mode all-on]`
 *
 * The scheduler alone, over real sockets: N items of C ms (at speed 1) on sim nodes of speeds
 * 1,1,2,2,4,4,8,8, each its own process with its own Socket.IO connection to an in-process hub.
 * Scenarios: (a) steady; (b) the fastest node slows 10x at half the ideal time; (c) one speed-8 node
 * is SIGKILLed at half time; (d) a speed-8 node joins at half time (in this process, over its own
 * socket, so Node's start-up time is not counted as the scheduler's). Modes: all off (equal static
 * split), weights only (weighted static split), weights + stealing, and everything on (dynamic
 * weighted-factoring shards, stealing, speculation). Every node has benchmarked the model (a warm-up
 * job) before the measured job; makespan runs from the job's first assignment to its last result.
 * The ideal is computed from the known speeds, including the scenario's change of capacity.
 * `--rows R`: the measured job's items have R rows and cost R calibration items each (the sim backend
 * sleeps per row), so the benchmarks, run on one-row calibration items, are R times the rates the
 * nodes reach on the job: the case of a real job whose items are not its model's calibration item.
 */
import type { ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runNode, type NodeHandle } from '../native/node.ts';
import { packTensors } from '../protocol/pack.ts';
import { createLogger } from '../server/logger.ts';
import { DEFAULT_TRUST_OPTIONS } from '../server/trust.ts';
import type { SchedulerOptions } from '../server/scheduler/scheduler.ts';
import { calibrationInputs, withRows } from '../worker/calibration.ts';
import { benchHub, printTable, spawnNode, until } from './_grid.ts';
import { openJob } from '../test/helpers/store-rows.ts';

const SPEEDS = [1, 1, 2, 2, 4, 4, 8, 8];
const MODES: Record<string, Partial<SchedulerOptions>> = {
  'all-off': { weighting: false, factoring: false, stealing: false, speculation: false },
  weights: { weighting: true, factoring: false, stealing: false, speculation: false },
  'weights+stealing': { weighting: true, factoring: false, stealing: true, speculation: false },
  'all-on': { weighting: true, factoring: true, stealing: true, speculation: true },
};
const SCENARIOS = { a: 'steady', b: 'fastest slows 10x', c: 'one killed', d: 'one joins' } as const;
type Scenario = keyof typeof SCENARIOS;

interface Row {
  scenario: string;
  mode: string;
  rows: number;
  makespan_s: number;
  ideal_s: number;
  efficiency: number;
  jain: number;
  cv_finish: number;
  steals: number;
  speculative: number;
  wasted_items: number;
}

function arg(args: string[], name: string): string | undefined {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : undefined;
}

/** Ideal makespan with the scenario's capacity change at half of the steady ideal. */
function idealFor(s: Scenario, items: number, itemMs: number): number {
  const rate = (speeds: number[]) => speeds.reduce((a, b) => a + b, 0) * (1000 / itemMs);
  const steady = items / rate(SPEEDS);
  if (s === 'a') return steady;
  const half = steady / 2;
  const doneAtHalf = half * rate(SPEEDS);
  const after =
    s === 'b'
      ? rate([...SPEEDS.slice(0, -1), 8 / 10])
      : s === 'c'
        ? rate(SPEEDS.slice(0, -1))
        : rate([...SPEEDS, 8]);
  return half + (items - doneAtHalf) / after;
}

async function runOne(s: Scenario, mode: string, items: number, itemMs: number, rows: number): Promise<Row> {
  // The operator's own nodes: trusted from the start (`--trust-native`), so probation replicas do
  // not blur what is measured here, the scheduler. Canaries still run.
  const { hub, done } = await benchHub({
    hub: { scheduler: MODES[mode], trust: { ...DEFAULT_TRUST_OPTIONS, trustNative: true } },
  });
  const dir = mkdtempSync(join(tmpdir(), 'shardhub-makespan-'));
  const nodes: ChildProcess[] = [];
  let joiner: NodeHandle | undefined;
  try {
    SPEEDS.forEach((speed, i) =>
      nodes.push(
        spawnNode(hub, join(dir, `n${i}`), [
          '--backend',
          'sim',
          '--speed',
          String(speed),
          '--item-ms',
          String(itemMs),
          '--name',
          `sim${i}-x${speed}`,
        ]),
      ),
    );
    await until(
      '8 sim nodes online',
      () => [...hub.hub.workers.values()].filter((w) => w.state === 'online').length === SPEEDS.length,
    );
    const model = hub.hub.models.byName('noop');
    if (!model) throw new Error('noop model missing: run `npm run models`');
    const shaped = withRows(model, rows);
    const submit = async (n: number, seed: number, of = model) => {
      const job = await hub.hub.createJob(openJob('noop'));
      await hub.hub.appendItems(
        job.id,
        Array.from({ length: n }, (_, i) => ({
          name: `i${i}`,
          inputs: packTensors(calibrationInputs(of, seed + i)),
        })),
      );
      await hub.hub.sealJob(job.id);
      return job.id;
    };
    // Warm-up: every node benchmarks the model before the measured job.
    const warm = await submit(SPEEDS.length * 4, 1);
    await until('warm-up done', async () => (await hub.hub.jobs.get(warm))?.state === 'completed');
    await until('all benchmarked', () =>
      [...hub.hub.workers.keys()].every((id) => hub.hub.schedule.benchmark(id, model.sha256)),
    );

    const jobId = await submit(items, 10_000, shaped);
    const started = await until(
      'job started',
      async () => (await hub.hub.jobs.get(jobId))?.startedAt,
      60_000,
      1,
    );
    const ideal = idealFor(s, items, itemMs * rows);
    if (s !== 'a') {
      const at = started + (idealFor('a', items, itemMs * rows) / 2) * 1000;
      await new Promise((ok) => setTimeout(ok, Math.max(0, at - Date.now())));
      const fastest = nodes[SPEEDS.length - 1] as ChildProcess;
      if (s === 'b') fastest.kill('SIGUSR1');
      if (s === 'c') fastest.kill('SIGKILL');
      // The joiner runs in this process (its own real socket): a process start (~1 s of tsx) would
      // measure Node's start-up, not the scheduler. Connect, register and benchmark are counted.
      if (s === 'd') {
        joiner = await runNode({
          hub: hub.url,
          token: hub.tokens.joinToken,
          backend: 'sim',
          sim: { speed: 8, itemMs },
          name: 'joiner-x8',
          stateDir: join(dir, 'joiner'),
          cacheDir: join(dir, 'joiner', 'cache'),
          logger: createLogger('joiner', 'error'),
        });
      }
    }
    await until('job done', async () => (await hub.hub.jobs.get(jobId))?.state === 'completed', 600_000, 2);
    const job = await hub.hub.jobs.get(jobId);
    const report = await hub.hub.fairnessOf(jobId, true);
    if (!job || !report) throw new Error('job vanished');
    const makespan = ((job.finishedAt ?? 0) - (job.startedAt ?? 0)) / 1000;
    if (process.env.MAKESPAN_DEBUG) {
      process.stderr.write(
        `${JSON.stringify({ throughput: report.throughput.map((x) => x.items), workers: report.workers.map((w) => [w.name, w.items, +w.idleS.toFixed(2), w.finishS?.toFixed(2), w.weight?.toFixed(0), w.benchmark?.toFixed(0)]) })}\n`,
      );
    }
    return {
      scenario: `${s} ${SCENARIOS[s]}`,
      mode,
      rows,
      makespan_s: makespan,
      ideal_s: ideal,
      efficiency: ideal / makespan,
      jain: report.jain,
      cv_finish: report.cvFinish,
      steals: report.steals,
      speculative: report.speculative,
      wasted_items: report.wastedItems,
    };
  } finally {
    for (const n of nodes) n.kill('SIGKILL');
    await joiner?.close();
    await done();
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Runs the scenarios and modes asked for and prints the table (or JSON). */
export async function main(args: string[]): Promise<void> {
  const json = args.includes('--json');
  const items = Number(arg(args, 'items') ?? 4000);
  const itemMs = Number(arg(args, 'item-ms') ?? 20);
  const itemRows = Number(arg(args, 'rows') ?? 1);
  if (!Number.isInteger(itemRows) || itemRows < 1) throw new Error('--rows must be a whole number >= 1');
  const scenarios = (arg(args, 'scenario')?.split(',') ?? Object.keys(SCENARIOS)) as Scenario[];
  const modes = arg(args, 'mode')?.split(',') ?? Object.keys(MODES);
  const rows: Row[] = [];
  for (const s of scenarios) {
    for (const m of modes) {
      if (!MODES[m] || !(s in SCENARIOS)) throw new Error(`unknown scenario ${s} or mode ${m}`);
      const row = await runOne(s, m, items, itemMs, itemRows);
      rows.push(row);
      if (!json) process.stderr.write(`${row.scenario} / ${m}: efficiency ${row.efficiency.toFixed(3)}\n`);
    }
  }
  if (json)
    process.stdout.write(
      `${JSON.stringify(rows.map((r) => ({ ...r, scenario: r.scenario.split(' ')[0] })))}\n`,
    );
  else printTable(rows as unknown as Record<string, unknown>[]);
}
