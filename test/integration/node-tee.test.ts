/**
 * A node started as `npm run shardhub -- node ... 2>&1 | tee FILE` or `shardhub node ... | tee FILE`
 * and stopped with Ctrl-C (SIGINT to the terminal's process group, which ends tee too) leaves no
 * process behind, run after run. The failure this guards against came one run in several: a node
 * that exited while log lines were on their way to the pipe never ended (`server/logger.ts`). The
 * first tests show that cause alone; the loop repeats the whole: `SHARDHUB_TEE_RUNS=24` makes it
 * the loop that found the race, and the default keeps it fast.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { HubServer } from '../../server/app.ts';
import { calibrationInputs } from '../../worker/calibration.ts';
import { killProcessesWith, processesWith, ROOT, Rest, startHub, tempDir, waitFor } from '../helpers/grid.ts';

const RUNS = Number(process.env.SHARDHUB_TEE_RUNS ?? 2);

/**
 * How each run starts its node (npm run, or the `shardhub` command) and when Ctrl-C comes: while
 * it starts (it closes at once, with log lines on their way to the pipe: the case that hung),
 * while busy, and once registered.
 */
const MODES = [
  { how: 'npm', when: '"msg":"starting node"' },
  { how: 'bin', when: 'busy' },
  { how: 'npm', when: 'busy' },
  { how: 'bin', when: '"msg":"registered"' },
] as const;

describe('logging to a pipe whose reader is gone', () => {
  const tmp = tempDir();
  after(() => tmp.cleanup());

  // What hung a node piped through tee: it exited while log lines were on their way to the pipe,
  // tee having died with the same Ctrl-C, and the logger's flush at exit retried the write forever.
  for (const format of ['json', 'human']) {
    test(`a process that logs and exits at once still exits (${format} lines)`, async () => {
      const script = join(tmp.dir, `exit-${format}.ts`);
      writeFileSync(
        script,
        `import { createLogger } from ${JSON.stringify(join(ROOT, 'server/logger.ts'))};
const log = createLogger('epipe');
setTimeout(() => {
  for (let i = 0; i < 200; i++) log.info({ i }, 'a line of some length ' + 'x'.repeat(200));
  process.exit(0);
}, 300);
`,
      );
      // \`| true\`: the reader ends at once, without reading.
      const sh = spawn('sh', ['-c', `${process.execPath} --import tsx ${script} | true`], {
        cwd: ROOT,
        detached: true,
        env: { ...process.env, SHARDHUB_LOG_FORMAT: format, SHARDHUB_LOG_LEVEL: 'info' },
        stdio: 'ignore',
      });
      const code = await Promise.race([
        new Promise<number | null>((ok) => sh.once('exit', (c) => ok(c))),
        new Promise<'hung'>((ok) => setTimeout(() => ok('hung'), 20_000)),
      ]);
      if (code === 'hung') process.kill(-(sh.pid as number), 'SIGKILL');
      assert.equal(code, 0, 'the process exited');
    });
  }
});

describe('Ctrl-C to a node piped through tee', { timeout: 120_000 + RUNS * 60_000 }, () => {
  const tmp = tempDir();
  let hub: HubServer;
  let rest: Rest;
  const groups: number[] = [];

  before(async () => {
    hub = await startHub(join(tmp.dir, 'hub'));
    rest = new Rest(hub.url, hub.tokens.operatorToken);
  });
  after(async () => {
    for (const pid of groups) {
      try {
        process.kill(-pid, 'SIGKILL');
      } catch {
        /* already gone */
      }
    }
    killProcessesWith(tmp.dir);
    await hub.close();
    tmp.cleanup();
  });

  /** Queues PaddleOCR detection items (about half a second each here) unless some are still queued. */
  async function keepQueued(): Promise<void> {
    const queued = (await hub.hub.jobs.list({ limit: 1000 })).some(
      (j) => (j.state === 'running' || j.state === 'queued') && hub.hub.jobs.queued(j.id) > 4,
    );
    if (queued) return;
    const model = hub.hub.models.byName('ppocr-det');
    assert.ok(model, 'ppocr-det is bundled');
    const items = Array.from({ length: 40 }, (_, i) => ({
      name: `i${i}`,
      tensors: calibrationInputs(model, 100 + i),
    }));
    await rest.submit('ppocr-det', items);
  }

  test(`${RUNS} runs: on Ctrl-C each node drains or stops, and every process of it exits`, async () => {
    const left: string[] = [];
    for (let run = 0; run < RUNS; run++) {
      await keepQueued();
      const name = `tee-${run}`;
      const state = join(tmp.dir, name);
      const file = join(tmp.dir, `${name}.log`);
      const args = [
        ...['--hub', hub.url, '--token', hub.tokens.joinToken, '--backend', 'cpu'],
        ...['--state', state, '--cache', join(tmp.dir, 'cache'), '--name', name],
      ];
      // Both ways users start a node, Ctrl-C'd at the moments a user might press it.
      const mode = MODES[run % MODES.length] as (typeof MODES)[number];
      const command =
        mode.how === 'npm'
          ? `npm run --silent shardhub -- node ${args.join(' ')} 2>&1`
          : `${process.execPath} bin/shardhub.js node ${args.join(' ')}`;
      const sh = spawn('sh', ['-c', `${command} | tee ${file}`], {
        cwd: ROOT,
        detached: true,
        env: { ...process.env, SHARDHUB_LOG_LEVEL: 'info' },
        stdio: ['ignore', 'ignore', 'ignore'],
      });
      groups.push(sh.pid as number);
      const exited = new Promise<void>((ok) => sh.once('exit', () => ok()));
      let topped = Date.now();
      await waitFor(
        `${name} running items`,
        async () => {
          // Items may run out while the node starts (the hub's reference backend confirms some).
          if (Date.now() - topped > 2000) {
            topped = Date.now();
            await keepQueued();
          }
          if (mode.when !== 'busy') return existsSync(file) && readFileSync(file, 'utf8').includes(mode.when);
          return [...hub.hub.workers.values()].some(
            (w) => w.name === name && w.state !== 'offline' && w.running > 0,
          );
        },
        120_000,
        50,
      ).catch(async (err: Error) => {
        const jobs = (await hub.hub.jobs.list({ limit: 10 })).map(
          (j) => `${j.id} ${j.state} ${j.doneCount}/${j.itemCount} queued ${hub.hub.jobs.queued(j.id)}`,
        );
        const workers = [...hub.hub.workers.values()].map((w) => `${w.name} ${w.state} running ${w.running}`);
        throw new Error(
          `${err.message}\njobs: ${jobs.join('; ')}\nworkers: ${workers.join('; ')}\n${readFileSync(file, 'utf8').slice(-3000)}`,
        );
      });
      process.kill(-(sh.pid as number), 'SIGINT');
      // The shell ends with npm, which ends with the node (or at once, for the shardhub command).
      await Promise.race([exited, new Promise((ok) => setTimeout(ok, 60_000))]);
      // The node's own process is in a group of its own (native/launch.ts): it must end by itself.
      const gone = await waitFor(
        'every process of the node gone',
        () => processesWith(state).length === 0,
        30_000,
      )
        .then(() => true)
        .catch(() => false);
      if (!gone) {
        const stuck = processesWith(state);
        left.push(
          `run ${run} (${mode.how}, Ctrl-C at ${mode.when}): ${stuck.map((p) => `${p.pid} ${p.cmd.slice(0, 120)}`).join('; ')}\n${readFileSync(file, 'utf8').slice(-1500)}`,
        );
        process.stdout.write(`left behind: ${left.at(-1)}\n`);
        for (const p of stuck) process.kill(p.pid, 'SIGKILL');
      }
      await waitFor('the node offline', () =>
        [...hub.hub.workers.values()].every((w) => w.name !== name || w.state === 'offline'),
      );
    }
    assert.deepEqual(left, [], `processes left behind after Ctrl-C:\n${left.join('\n')}`);
  });
});
