/**
 * A native node's identity: its worker id and secret, persisted (mode 0600) in
 * `<state>/node-<hubhost>-<port>[-<id>][-<slot>].json`, so a restarted node is the same worker to
 * the hub, and locked (`<file>.lock`, the pid of the node using it) so two nodes on one machine
 * never connect as one worker.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync, unlinkSync } from 'node:fs';
import { mkdir, readFile, rename, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from '../common/logger.ts';
import { NodeFatalError } from './errors.ts';

/** A worker identity as kept in the state file. */
export interface NodeIdentity {
  workerId: string;
  workerSecret: string;
}

const WORKER_ID = /^[A-Za-z0-9_-]{8,64}$/;

/** The identity file for a hub (and optional fixed id, and slot after the first) inside a state dir. */
export function identityFile(stateDir: string, hub: string, id?: string, slot = 1): string {
  const url = new URL(hub);
  const port = url.port || (url.protocol === 'https:' ? '443' : '80');
  const host = url.hostname.replace(/[^A-Za-z0-9.-]/g, '_');
  return join(stateDir, `node-${host}-${port}${id ? `-${id}` : ''}${slot > 1 ? `-${slot}` : ''}.json`);
}

/** Whether a process with this pid is alive (ours or another user's). */
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Takes `<file>.lock` for this process: the pid of the node using an identity. A lock whose process
 * is gone is taken over. Returns the lock's release, or the pid of the live node holding it.
 */
async function lockIdentity(file: string): Promise<{ release: () => void } | { heldBy: number }> {
  const lock = `${file}.lock`;
  for (let tries = 0; tries < 3; tries++) {
    try {
      await writeFile(lock, `${process.pid}\n`, { flag: 'wx', mode: 0o600 });
      const release = () => {
        try {
          if (readFileSync(lock, 'utf8').trim() === String(process.pid)) unlinkSync(lock);
        } catch {
          // already gone
        }
      };
      process.once('exit', release);
      return { release };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    const pid = Number((await readFile(lock, 'utf8').catch(() => '')).trim());
    if (Number.isSafeInteger(pid) && pid > 0 && pid !== process.pid && alive(pid)) return { heldBy: pid };
    await unlink(lock).catch(() => undefined); // stale: its node is gone
  }
  throw new NodeFatalError(`cannot take the lock ${lock}; delete it if no node is running`);
}

/** How many nodes with the default identity may run on one machine for one hub. */
const MAX_SLOTS = 64;

/**
 * The identity this process runs as, locked for as long as it runs, so that two nodes on one
 * machine never connect as one worker (the hub would swap them over on every reconnect). Without
 * `--id`, a node that finds the default identity in use takes the next free one
 * (`node-<host>-<port>-2.json`, ...): each keeps its own from one start to the next. With `--id`,
 * it refuses to start.
 */
export async function claimIdentity(
  stateDir: string,
  hub: string,
  id: string | undefined,
  log?: Logger,
): Promise<NodeIdentity & { file: string; release: () => void }> {
  await mkdir(stateDir, { recursive: true, mode: 0o700 });
  for (let slot = 1; slot <= (id ? 1 : MAX_SLOTS); slot++) {
    const file = identityFile(stateDir, hub, id, slot);
    const lock = await lockIdentity(file);
    if ('heldBy' in lock) {
      if (id)
        throw new NodeFatalError(
          `another node (pid ${lock.heldBy}) on this machine already runs as worker ${id}; give this one another --id, or stop that one`,
        );
      continue;
    }
    try {
      const identity = await loadIdentity(stateDir, hub, id, slot);
      if (slot > 1)
        log?.info(
          { identityFile: identity.file },
          'another node on this machine uses the default identity; this one runs as a worker of its own',
        );
      return { ...identity, release: lock.release };
    } catch (err) {
      lock.release();
      throw err;
    }
  }
  throw new NodeFatalError(`${MAX_SLOTS} nodes already run on this machine for ${hub}; stop one first`);
}

/**
 * Loads this node's identity, creating and persisting it on first start. With `id`, the worker id
 * is that id and only the secret is generated.
 */
export async function loadIdentity(
  stateDir: string,
  hub: string,
  id?: string,
  slot = 1,
): Promise<NodeIdentity & { file: string }> {
  if (id !== undefined && !WORKER_ID.test(id))
    throw new NodeFatalError('--id must be 8-64 characters of [A-Za-z0-9_-]');
  const file = identityFile(stateDir, hub, id, slot);
  let text: string | undefined;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT')
      throw new NodeFatalError(`cannot read ${file}: ${(err as Error).message}`);
  }
  if (text !== undefined) {
    let parsed: Partial<NodeIdentity> = {};
    try {
      parsed = JSON.parse(text) as Partial<NodeIdentity>;
    } catch {
      // reported below
    }
    const ok =
      typeof parsed.workerId === 'string' &&
      WORKER_ID.test(parsed.workerId) &&
      typeof parsed.workerSecret === 'string' &&
      parsed.workerSecret.length >= 16 &&
      parsed.workerSecret.length <= 128 &&
      (id === undefined || parsed.workerId === id);
    if (!ok)
      throw new NodeFatalError(`${file} is not a valid node identity; delete it to start as a new worker`);
    return { workerId: parsed.workerId as string, workerSecret: parsed.workerSecret as string, file };
  }
  const identity: NodeIdentity = {
    workerId: id ?? `n-${randomBytes(12).toString('base64url')}`,
    workerSecret: randomBytes(24).toString('base64url'),
  };
  await mkdir(stateDir, { recursive: true, mode: 0o700 });
  const tmp = `${file}.${process.pid}.tmp`;
  await writeFile(tmp, `${JSON.stringify(identity, null, 2)}\n`, { mode: 0o600 });
  await rename(tmp, file);
  return { ...identity, file };
}
