/** Shared pieces of the benchmarks: a quiet in-process hub, sim nodes as child processes, tables. */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { HubServer, type HubConfig } from '../server/app.ts';
import { createLogger } from '../server/logger.ts';
import { NODE_V8_FLAGS, nodeEnv } from '../native/launch.ts';

export const ROOT = resolve(fileURLToPath(import.meta.url), '../..');

/** A hub on 127.0.0.1 with a throwaway data dir. */
export async function benchHub(
  config: Partial<HubConfig> = {},
): Promise<{ hub: HubServer; done: () => Promise<void> }> {
  const dir = mkdtempSync(join(tmpdir(), 'shardhub-bench-'));
  const hub = await HubServer.start(
    {
      host: '127.0.0.1',
      port: 0,
      dataDir: dir,
      ...config,
      hub: { heartbeatMs: 500, offlineAfterMs: 2000, ...config.hub },
    },
    createLogger('hub', process.env.SHARDHUB_LOG_LEVEL ?? 'error'),
  );
  return {
    hub,
    done: async () => {
      await hub.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Starts a native node child process (sim or real backend). */
export function spawnNode(hub: HubServer, stateDir: string, args: string[]): ChildProcess {
  return spawn(
    process.execPath,
    [
      '--import',
      'tsx',
      ...NODE_V8_FLAGS, // as `shardhub node` runs (native/launch.ts)
      join(ROOT, 'native/main.ts'),
      '--hub',
      hub.url,
      '--token',
      hub.tokens.joinToken,
      '--state',
      stateDir,
      '--cache',
      join(stateDir, 'cache'),
      ...args,
    ],
    { cwd: ROOT, stdio: 'ignore', env: nodeEnv({ ...process.env, SHARDHUB_LOG_LEVEL: 'error' }) },
  );
}

/** Polls until `check` is truthy. */
export async function until<T>(
  what: string,
  check: () => T | Promise<T>,
  timeoutMs = 60_000,
  everyMs = 5,
): Promise<NonNullable<T>> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await check();
    if (v) return v as NonNullable<T>;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((ok) => setTimeout(ok, everyMs));
  }
}

/** Prints rows as an aligned table. */
export function printTable(rows: Record<string, unknown>[]): void {
  if (rows.length === 0) return;
  const cols = Object.keys(rows[0] as object);
  const cell = (v: unknown) =>
    typeof v === 'number' ? (Number.isInteger(v) ? String(v) : v.toFixed(3)) : String(v);
  const widths = cols.map((c) => Math.max(c.length, ...rows.map((r) => cell(r[c]).length)));
  const line = (vals: string[]) => vals.map((v, i) => v.padEnd(widths[i] ?? 0)).join('  ');
  process.stdout.write(`${line(cols)}\n${line(widths.map((w) => '-'.repeat(w)))}\n`);
  for (const r of rows) process.stdout.write(`${line(cols.map((c) => cell(r[c])))}\n`);
}
