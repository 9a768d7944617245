/**
 * `npm run bench -- liveness [--json] [--trials 3] [--backend sim|cpu]`
 *
 * Time from a worker's death to its items being requeued, with the hub's default liveness settings
 * (heartbeat every 2 s, offline after 6 s of silence, checked every second):
 *
 * - (a) `SIGKILL` of a native node process: the kernel closes its connection, the hub sees the
 *   disconnect and requeues at once;
 * - (b) a hung node (`SIGSTOP`): the connection stays open and silent, so only the heartbeat
 *   timeout can tell; expected between 6 s - one heartbeat interval and 6 s + one check interval
 *   after the stop, depending on when its last heartbeat was.
 *
 * Each trial is a fresh `shardhub node` process (`native/main.ts`; the sim backend by default: the
 * backend does not matter to liveness and onnxruntime takes seconds to load) holding items of a
 * running job. The hub, in its own process, sends the signal itself and notes the requeue, so both
 * moments are read on one clock.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ROOT, printTable } from './_grid.ts';
import { flag, numFlag, startHubProcess, waitFor, type HubProc } from './_scale.ts';
import { NODE_V8_FLAGS, nodeEnv } from '../native/launch.ts';

/** Starts `shardhub node` as its own process, with a fixed worker id. */
function startNode(hub: HubProc, dir: string, id: string, backend: string): ChildProcess {
  const sim = backend === 'sim' ? ['--item-ms', '200'] : [];
  return spawn(
    process.execPath,
    [
      '--import',
      'tsx',
      ...NODE_V8_FLAGS, // as `shardhub node` runs (native/launch.ts)
      join(ROOT, 'native/main.ts'),
      ...['--hub', hub.url, '--token', hub.joinToken, '--id', id, '--backend', backend],
      ...['--state', join(dir, id), '--cache', join(dir, 'cache'), ...sim],
    ],
    { cwd: ROOT, stdio: 'ignore', env: nodeEnv({ ...process.env, SHARDHUB_LOG_LEVEL: 'error' }) },
  );
}

interface Row {
  case: string;
  trial: number;
  held: number;
  requeued: number;
  ms: number;
  reason: string;
}

/** Runs the liveness trials and prints the table (or JSON). */
export async function main(args: string[]): Promise<void> {
  const json = args.includes('--json');
  const trials = numFlag(args, 'trials', 3);
  const backend = flag(args, 'backend') ?? 'sim';
  const model = backend === 'sim' ? 'noop' : 'mlp-small';
  const dir = mkdtempSync(join(tmpdir(), 'shardhub-liveness-'));
  // The hub's defaults: heartbeat 2 s, offline after 6 s.
  const hub = await startHubProcess({});
  const rows: Row[] = [];
  const nodes: ChildProcess[] = [];
  try {
    // A job that outlasts every trial.
    const jobId = await hub.rpc.call<string>('submit', { model, items: 100_000 });
    await hub.rpc.call('seal', { jobId });
    let n = 0;
    for (const [name, signal] of [
      ['a SIGKILL (connection closes)', 'SIGKILL'],
      ['b SIGSTOP (hung, connection open)', 'SIGSTOP'],
    ] as const) {
      for (let t = 1; t <= trials; t++) {
        const id = `liveness-node-${String(++n).padStart(2, '0')}`;
        const node = startNode(hub, dir, id, backend);
        nodes.push(node);
        await waitFor(
          `${id} holding items`,
          async () => (await hub.rpc.call<number>('held', { workerId: id })) > 0,
        );
        // Somewhere in the heartbeat cycle, not always right after registering.
        await new Promise((ok) => setTimeout(ok, 500 + Math.random() * 2000));
        const r = await hub.rpc.call<{ ms: number; held: number; requeued: number; reason: string }>(
          'killAndTime',
          { workerId: id, pid: node.pid, signal },
        );
        rows.push({ case: name, trial: t, held: r.held, requeued: r.requeued, ms: r.ms, reason: r.reason });
        if (!json) process.stderr.write(`${name} #${t}: ${r.ms.toFixed(1)} ms\n`);
        if (signal === 'SIGSTOP') node.kill('SIGCONT');
        node.kill('SIGKILL');
      }
    }
  } finally {
    for (const node of nodes) node.kill('SIGKILL');
    await hub.stop();
    rmSync(dir, { recursive: true, force: true });
  }
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number;
  const of = (c: string) => rows.filter((r) => r.case.startsWith(c)).map((r) => r.ms);
  if (json) {
    process.stdout.write(
      `${JSON.stringify({
        sigkill_requeue_ms: Number(median(of('a')).toFixed(1)),
        sigstop_requeue_ms: Math.round(median(of('b'))),
        sigkill_trials_ms: of('a').map((x) => Number(x.toFixed(1))),
        sigstop_trials_ms: of('b').map((x) => Math.round(x)),
        heartbeat_ms: 2000,
        offline_after_ms: 6000,
      })}\n`,
    );
    return;
  }
  process.stdout.write(
    `liveness: death of a native node (${backend} backend) -> its items requeued by the hub; hub defaults:` +
      ` heartbeat 2000 ms, offline after 6000 ms (checked every 1000 ms)\n\n`,
  );
  printTable(rows as unknown as Record<string, unknown>[]);
  process.stdout.write(
    `\nmedian: SIGKILL ${median(of('a')).toFixed(1)} ms, SIGSTOP ${median(of('b')).toFixed(0)} ms\n`,
  );
}
