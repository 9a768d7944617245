/**
 * A real PostgreSQL server for tests and benches: `SHARDHUB_TEST_PG_URL` when set, otherwise one
 * started here — `initdb` into a temporary folder and `pg_ctl start` on a free port, bound to
 * 127.0.0.1, fsync off — and stopped (its folder removed) by `stop()`. As root, both run as the
 * `postgres` user (initdb refuses root). `undefined` with a reason when no binaries are installed.
 */
import { execFileSync } from 'node:child_process';
import { chownSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';

export interface TestPostgres {
  url: string;
  /** The postmaster's pid, for a server started here (to read its CPU time). */
  pid?: number;
  /** Stops the server this helper started (nothing for an external one). */
  stop(): Promise<void>;
}

/** Debian's binaries are not on PATH: the newest `/usr/lib/postgresql/<v>/bin`, else PATH's. */
export function postgresBin(): string | undefined {
  const root = '/usr/lib/postgresql';
  if (existsSync(root)) {
    const versions = readdirSync(root)
      .filter((v) => existsSync(join(root, v, 'bin', 'pg_ctl')))
      .sort((a, b) => Number(b) - Number(a));
    if (versions.length > 0) return join(root, versions[0], 'bin');
  }
  try {
    const ctl = execFileSync('sh', ['-c', 'command -v pg_ctl'], { encoding: 'utf8' }).trim();
    return ctl ? ctl.replace(/\/pg_ctl$/, '') : undefined;
  } catch {
    return undefined;
  }
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

/** A server to test against, or a reason there is none. */
export async function startPostgres(): Promise<TestPostgres | { skip: string }> {
  const external = process.env.SHARDHUB_TEST_PG_URL;
  if (external) return { url: external, stop: async () => {} };
  const bin = postgresBin();
  if (!bin) {
    return {
      skip: 'PostgreSQL binaries not found (install Debian `postgresql`, or set SHARDHUB_TEST_PG_URL)',
    };
  }
  const root = process.getuid?.() === 0;
  const dir = mkdtempSync(join(tmpdir(), 'shardhub-pg-'));
  if (root) chownSync(dir, uidOf('postgres'), gidOf('postgres'));
  const run = (cmd: string, args: string[]) =>
    root
      ? execFileSync('runuser', ['-u', 'postgres', '--', join(bin, cmd), ...args], { stdio: 'pipe' })
      : execFileSync(join(bin, cmd), args, { stdio: 'pipe' });
  const data = join(dir, 'data');
  const port = await freePort();
  try {
    run('initdb', ['-D', data, '-U', 'postgres', '-A', 'trust', '-E', 'UTF8', '--no-sync']);
    run('pg_ctl', [
      '-D',
      data,
      '-l',
      join(dir, 'log'),
      '-w',
      '-o',
      `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off -c max_connections=200`,
      'start',
    ]);
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    const e = err as { stderr?: Buffer; message: string };
    throw new Error(`could not start PostgreSQL: ${e.stderr?.toString() || e.message}`, { cause: err });
  }
  return {
    url: `postgres://postgres@127.0.0.1:${port}/postgres`,
    pid: Number(readFileSync(join(data, 'postmaster.pid'), 'utf8').split('\n')[0]),
    stop: async () => {
      try {
        run('pg_ctl', ['-D', data, '-m', 'fast', '-w', 'stop']);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    },
  };
}

function uidOf(user: string): number {
  return Number(execFileSync('id', ['-u', user], { encoding: 'utf8' }).trim());
}

function gidOf(user: string): number {
  return Number(execFileSync('id', ['-g', user], { encoding: 'utf8' }).trim());
}

/**
 * A new, empty database on the server at `url` (named from `prefix`, unique), for a test that needs
 * what a fresh one gives (hub epochs from 1); `drop()` removes it, closing whatever is still
 * connected to it.
 */
export async function createDatabase(
  url: string,
  prefix: string,
): Promise<{ url: string; drop: () => Promise<void> }> {
  const name = `${prefix}_${process.pid}_${Date.now()}`.replace(/[^a-z0-9_]/g, '_');
  const admin = async (sql: string) => {
    const c = new pg.Client({ connectionString: url });
    await c.connect();
    try {
      await c.query(sql);
    } finally {
      await c.end();
    }
  };
  await admin(`CREATE DATABASE ${name}`);
  const u = new URL(url);
  u.pathname = `/${name}`;
  return { url: u.toString(), drop: () => admin(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`) };
}

/**
 * A test server with a fresh database on it, for one suite: open it in the suite's `before`, close
 * it last in its `after` (after the hubs using it), or the reason there is none.
 */
export async function openTestDatabase(
  prefix: string,
): Promise<{ url: string; close: () => Promise<void> } | { skip: string }> {
  const server = await startPostgres();
  if ('skip' in server) return server;
  try {
    const db = await createDatabase(server.url, prefix);
    return {
      url: db.url,
      close: async () => {
        try {
          await db.drop();
        } finally {
          await server.stop();
        }
      },
    };
  } catch (err) {
    await server.stop();
    throw err;
  }
}
