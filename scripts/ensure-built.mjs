#!/usr/bin/env node
/**
 * `npm start` runs this first (`prestart`): it builds what a hub serves and is missing or older
 * than its sources, so that `npm ci && npm start` gives a working grid with nothing else asked of
 * the user. Each part is skipped when its outputs are newer than every source file (a stat walk,
 * a few milliseconds), so only the first start, or the first after a `git pull` that changed the
 * sources, pays for a build (pages about 5 s, models about 2 s on 2 cores).
 *
 * - the pages: `vite build` (`client/`, `worker/`, `protocol/` → `dist/client`);
 * - the generated test models: `tsx models/build.ts` (→ `models/generated/`).
 *
 * Usage: `node scripts/ensure-built.mjs [--check]` (`--check`: exit 1 if something is stale, build nothing).
 */
import { spawnSync } from 'node:child_process';
import { readdirSync, statSync, utimesSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');

/** Newest mtime (ms) among files under each path (0 if none). */
function newest(paths) {
  let max = 0;
  const walk = (p) => {
    let st;
    try {
      st = statSync(p);
    } catch {
      return;
    }
    if (st.isDirectory()) {
      for (const e of readdirSync(p)) if (e !== 'node_modules' && !e.startsWith('.')) walk(join(p, e));
    } else if (st.mtimeMs > max) max = st.mtimeMs;
  };
  for (const p of paths) walk(join(ROOT, p));
  return max;
}

/** Oldest mtime (ms) among the outputs, or -1 when one is missing. */
function oldest(paths) {
  let min = Infinity;
  for (const p of paths) {
    try {
      min = Math.min(min, statSync(join(ROOT, p)).mtimeMs);
    } catch {
      return -1;
    }
  }
  return min;
}

/** What is built, from what, and how. */
const PARTS = [
  {
    what: 'pages',
    outputs: ['dist/client/index.html', 'dist/client/dashboard.html'],
    sources: ['client', 'worker', 'protocol', 'vite.config.ts', 'package-lock.json'],
    command: [join(ROOT, 'node_modules/vite/bin/vite.js'), 'build', '--logLevel', 'error'],
  },
  {
    what: 'generated models',
    outputs: [
      'models/generated/mlp-small.onnx',
      'models/generated/mlp-tiny.onnx',
      'models/generated/noop.onnx',
    ],
    sources: ['models/build.ts'],
    command: ['--import', 'tsx', join(ROOT, 'models/build.ts')],
  },
];

const check = process.argv.includes('--check');
let stale = 0;
for (const part of PARTS) {
  const built = oldest(part.outputs);
  if (built >= 0 && built >= newest(part.sources)) continue;
  stale++;
  if (check) {
    process.stdout.write(`${part.what}: ${built < 0 ? 'missing' : 'out of date'}\n`);
    continue;
  }
  const started = Date.now();
  process.stdout.write(
    `shardhub: building the ${part.what} (${built < 0 ? 'first start' : 'sources changed'})...\n`,
  );
  const r = spawnSync(process.execPath, part.command, { cwd: ROOT, stdio: ['ignore', 'ignore', 'inherit'] });
  if (r.status !== 0) {
    process.stderr.write(
      `shardhub: building the ${part.what} failed (exit ${r.status ?? r.signal}); see above\n`,
    );
    process.exit(1);
  }
  // A build may leave an output whose bytes did not change untouched (models/build.ts does): mark
  // every output as built now, so the next start does not build again.
  const now = new Date();
  for (const o of part.outputs) utimesSync(join(ROOT, o), now, now);
  process.stdout.write(
    `shardhub: built the ${part.what} in ${((Date.now() - started) / 1000).toFixed(1)} s\n`,
  );
}
process.exit(check && stale > 0 ? 1 : 0);
