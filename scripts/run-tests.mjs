#!/usr/bin/env node
// Runs the test suites with Node's own test runner (through tsx for TypeScript), one layer at a time:
// unit, then integration (real hub + real sockets), then e2e (Playwright + Chromium).
// `node scripts/run-tests.mjs unit` runs one layer; extra args after the layer filter file names.
import { spawnSync } from 'node:child_process';
import { readdirSync, existsSync } from 'node:fs';
import { join } from 'node:path';

const layers = ['unit', 'integration', 'e2e'];
const [only, ...filters] = process.argv.slice(2);
const chosen = only ? [only] : layers;
let failed = false;
for (const layer of chosen) {
  const dir = join('test', layer);
  if (!existsSync(dir)) continue;
  const files = readdirSync(dir)
    .filter((f) => f.endsWith('.test.ts'))
    .filter((f) => filters.length === 0 || filters.some((x) => f.includes(x)))
    .map((f) => join(dir, f));
  if (files.length === 0) continue;
  process.stdout.write(`\n== ${layer}: ${files.length} file(s)\n`);
  const concurrency = layer === 'unit' ? '2' : '1';
  // --expose-gc reaches the test files' processes (the runner passes its execArgv on): memory
  // checks measure what is still reachable after a full collection (global.gc).
  const r = spawnSync(
    process.execPath,
    [
      '--expose-gc',
      '--import',
      'tsx',
      '--test',
      `--test-concurrency=${concurrency}`,
      '--test-reporter=spec',
      ...files,
    ],
    {
      stdio: 'inherit',
      env: { ...process.env, SHARDHUB_LOG_LEVEL: process.env.SHARDHUB_LOG_LEVEL ?? 'warn' },
    },
  );
  if (r.status !== 0) failed = true;
}
process.exit(failed ? 1 : 0);
