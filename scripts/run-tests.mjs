#!/usr/bin/env node
// Runs the test suites with Node's own test runner (through tsx for TypeScript), one layer at a time:
// unit, then integration (real hub + real sockets), then e2e (Playwright + Chromium).
// `node scripts/run-tests.mjs unit` runs one layer; extra args after the layer filter file names.
//
// Unit files run in one test process, two at a time. Integration and e2e files run one after the
// other, each in a test process of its own with a deadline (SHARDHUB_TEST_FILE_MINUTES, default 10):
// a file that hangs — a test that never settles, or a process that never exits — is killed with
// its process group and reported by name, and the files after it still run, instead of the whole
// run waiting for CI's limit with nothing said about where it stopped.
import { spawn } from 'node:child_process';
import { readdirSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

const layers = ['unit', 'integration', 'e2e'];
const [only, ...filters] = process.argv.slice(2);
const chosen = only ? [only] : layers;
const fileMinutes = Number(process.env.SHARDHUB_TEST_FILE_MINUTES ?? 10);
/** The unit layer runs as one process; its deadline covers all its files. */
const unitMinutes = Number(process.env.SHARDHUB_TEST_UNIT_MINUTES ?? 15);

/** Test processes running now (process group leaders), for Ctrl-C and deadlines. */
const running = new Set();
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => {
    for (const child of running) killGroup(child, 'SIGKILL');
    process.exit(130);
  });
}

function killGroup(child, sig) {
  try {
    process.kill(-child.pid, sig);
  } catch {
    /* gone already */
  }
}

/**
 * Runs `node --test` on `files`; resolves with its exit status (null when killed at the deadline),
 * the totals it printed, and its wall time. Its own process group, so a deadline ends the hubs,
 * nodes and browsers it started as well.
 */
function runTests(files, concurrency, minutes) {
  return new Promise((resolve) => {
    const t0 = Date.now();
    // --expose-gc reaches the test files' processes (the runner passes its execArgv on): memory
    // checks measure what is still reachable after a full collection (global.gc).
    const child = spawn(
      process.execPath,
      [
        '--expose-gc',
        '--import',
        'tsx',
        '--test',
        // A file whose tests have all finished exits, even with a handle left open.
        '--test-force-exit',
        `--test-concurrency=${concurrency}`,
        '--test-reporter=spec',
        ...files,
      ],
      {
        stdio: ['inherit', 'pipe', 'inherit'],
        detached: true,
        env: { ...process.env, SHARDHUB_LOG_LEVEL: process.env.SHARDHUB_LOG_LEVEL ?? 'warn' },
      },
    );
    running.add(child);
    const totals = {};
    createInterface({ input: child.stdout }).on('line', (line) => {
      process.stdout.write(`${line}\n`);
      const m = /^ℹ (tests|pass|fail|cancelled|skipped|todo) (\d+)$/.exec(line);
      if (m) totals[m[1]] = (totals[m[1]] ?? 0) + Number(m[2]);
    });
    let late = false;
    const deadline = setTimeout(() => {
      late = true;
      killGroup(child, 'SIGTERM');
      setTimeout(() => killGroup(child, 'SIGKILL'), 5000).unref();
    }, minutes * 60_000);
    child.on('close', (code) => {
      clearTimeout(deadline);
      running.delete(child);
      // Whatever the group left behind (a hub a test started and never stopped) goes with it.
      killGroup(child, 'SIGKILL');
      resolve({ code: late ? null : code, totals, seconds: (Date.now() - t0) / 1000 });
    });
  });
}

const summary = [];
let failed = false;
for (const layer of chosen) {
  const dir = join('test', layer);
  if (!existsSync(dir)) continue;
  const files = readdirSync(dir)
    .filter((f) => f.endsWith('.test.ts'))
    .filter((f) => filters.length === 0 || filters.some((x) => f.includes(x)))
    .sort()
    .map((f) => join(dir, f));
  if (files.length === 0) continue;
  process.stdout.write(`\n== ${layer}: ${files.length} file(s)\n`);
  const groups = layer === 'unit' ? [files] : files.map((f) => [f]);
  for (const group of groups) {
    if (group.length === 1) process.stdout.write(`\n-- ${group[0]}\n`);
    const minutes = layer === 'unit' ? unitMinutes : fileMinutes;
    const r = await runTests(group, layer === 'unit' ? 2 : 1, minutes);
    const name = group.length === 1 ? group[0] : `${layer} (${group.length} files)`;
    if (r.code === null) {
      process.stdout.write(
        `\n✖ ${name}: still running after ${minutes} min; stopped with its processes. ` +
          `Tests it had not finished are not listed above.\n`,
      );
    }
    if (r.code !== 0) failed = true;
    summary.push({ name, ...r });
  }
}

// One line per test process: where the time went, and which file failed or hung.
process.stdout.write('\n== summary\n');
const sum = {};
for (const s of summary) {
  for (const [k, v] of Object.entries(s.totals)) sum[k] = (sum[k] ?? 0) + v;
  const state = s.code === null ? 'TIMED OUT' : s.code === 0 ? 'ok' : 'FAILED';
  const t = s.totals;
  process.stdout.write(
    `${state.padEnd(9)} ${s.seconds.toFixed(0).padStart(5)} s  ${String(t.pass ?? 0).padStart(4)} passed` +
      `${t.fail ? `, ${t.fail} failed` : ''}  ${s.name}\n`,
  );
}
process.stdout.write(
  `tests ${sum.tests ?? 0}: ${sum.pass ?? 0} passed, ${sum.fail ?? 0} failed, ${sum.skipped ?? 0} skipped, ` +
    `${sum.todo ?? 0} todo, ${sum.cancelled ?? 0} cancelled\n`,
);
process.exit(failed ? 1 : 0);
