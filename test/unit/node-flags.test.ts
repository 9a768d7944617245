/**
 * The hub's Node flags: `npm start` passes every one of them, and this Node takes them (a flag it
 * does not know would stop `npm start` before the hub starts).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import { HUB_NODE_FLAGS } from '../../server/node-flags.ts';

describe('hub Node flags', () => {
  it('npm start passes every one of them to node', () => {
    const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8'));
    // `exec`: npm's shell becomes node, so npm's signals reach it (test/integration/node-signals.test.ts).
    const start = String(pkg.scripts.start).split(/\s+/);
    assert.deepEqual(start.slice(0, 2), ['exec', 'node']);
    for (const f of HUB_NODE_FLAGS)
      assert.ok(start.includes(f), `npm start lacks ${f}: ${pkg.scripts.start}`);
  });

  it('this Node starts with them', () => {
    const r = spawnSync(process.execPath, [
      ...HUB_NODE_FLAGS,
      '-e',
      'process.stdout.write(JSON.stringify(process.execArgv))',
    ]);
    assert.equal(r.status, 0, String(r.stderr));
    const execArgv = JSON.parse(String(r.stdout)) as string[];
    for (const f of HUB_NODE_FLAGS) assert.ok(execArgv.includes(f), `${f} not taken: ${execArgv}`);
  });
});
