/**
 * A native node: everything `shardhub node` needs, built around the shared {@link WorkerAgent}.
 *
 * - Identity: `--id`, else a generated id; either way the secret is persisted (mode 0600) in
 *   `<state>/node-<hubhost>-<port>[-<id>].json`, so a restarted node is the same worker to the hub.
 * - Connection: Socket.IO to `${hub}/worker` with exponential backoff and jitter. Socket.IO does not
 *   reconnect after a server-side disconnect or a refusal by the hub's middleware; this module does,
 *   with its own backoff, except when the hub refuses the join token or the identity: retrying those
 *   cannot help, so the node stops with a {@link NodeFatalError}.
 * - Models cached on disk by sha256 (verified when read, by `fetchModel`).
 * - Capabilities and heartbeat load figures from `node:os` and `nvidia-smi`.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync, unlinkSync } from 'node:fs';
import { mkdir, readFile, rename, unlink, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { availableParallelism, freemem, homedir, hostname, loadavg, totalmem } from 'node:os';
import { join } from 'node:path';
import { io } from 'socket.io-client';
import type { Capabilities, Heartbeat, WorkerAuth } from '../protocol/events.ts';
import { clean, createLogger, type Logger } from '../server/logger.ts';
import { WorkerAgent, type WorkerSocket } from '../worker/agent.ts';
import type { Backend, BackendFactory } from '../worker/backend.ts';
import type { ModelStore } from '../worker/model-cache.ts';
import { Reconnector } from '../worker/reconnect.ts';
import { shardhubParser } from '../protocol/socket-parser.ts';
import type { GpuInfo } from './ort-backend.ts';
import { adapterCapabilities, type AdapterInfo } from './gpu-probe.ts';
import type { SimOptions } from './sim-backend.ts';
import type { CorruptOptions } from './fault.ts';
import { UnmaskedWebSocket } from './ws-transport.ts';
import { DataChannelClient } from './data-channel.ts';
import { ECHO_MS } from './launch.ts';
import { statusText, TerminalStatus } from './status.ts';

/** Which backend a node runs: `auto` is CUDA, else a real GPU through WebGPU, else CPU (`backend-select.ts`). */
export type NodeBackendChoice = 'auto' | 'cpu' | 'cuda' | 'webgpu' | 'sim';

/** Options of {@link runNode} (the CLI's flags, parsed and validated). */
export interface NodeOptions {
  /** The hub's base URL, e.g. `http://hub.example:8080`. */
  hub: string;
  token?: string;
  concurrency?: number;
  backend?: NodeBackendChoice;
  sim?: Omit<SimOptions, 'die'>;
  pool?: string;
  name?: string;
  id?: string;
  /** Where the identity file lives (default `~/.shardhub`). */
  stateDir?: string;
  /** Where model bytes are cached (default `~/.cache/shardhub/models`). */
  cacheDir?: string;
  logger?: Logger;
  /** SIGINT/SIGTERM drain the node; a second SIGINT exits at once (default false; the CLI sets it). */
  handleSignals?: boolean;
  /** Socket.IO reconnection tuning (tests shorten it). */
  reconnect?: { delayMs?: number; maxDelayMs?: number; randomizationFactor?: number };
  /** Fault injection: corrupt items' outputs as these say (tests of the hub's checks; `fault.ts`). */
  corrupt?: Omit<CorruptOptions, 'random'>;
  /** How a sim node dies at `--die-at-s` (default `process.exit(137)`). */
  simDie?: () => void;
  /**
   * Ask for a data channel for large items' inputs (default true; `http:` hubs only, see
   * `protocol/data-channel.ts`). False: every input comes over Socket.IO.
   */
  dataChannel?: boolean;
}

/** A running node. */
export interface NodeHandle {
  readonly workerId: string;
  readonly agent: WorkerAgent;
  /** Resolves when the node has stopped (drained or closed); rejects with a {@link NodeFatalError}. */
  readonly done: Promise<void>;
  /** Hands back unstarted items, finishes running ones, flushes results, disconnects. */
  drain(): Promise<void>;
  /** Stops at once. */
  close(): Promise<void>;
}

/** The node cannot go on (bad join token, identity refused, unreadable state): exit non-zero. */
export class NodeFatalError extends Error {
  override name = 'NodeFatalError';
  readonly exitCode: number;
  constructor(message: string, exitCode = 1) {
    super(message);
    this.exitCode = exitCode;
  }
}

/** A worker identity as kept in the state file. */
export interface NodeIdentity {
  workerId: string;
  workerSecret: string;
}

const WORKER_ID = /^[A-Za-z0-9_-]{8,64}$/;
const SHA256 = /^[0-9a-f]{64}$/;

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

/**
 * Model bytes on disk, one file per model named by its sha256. Reads are verified by `fetchModel`
 * (a corrupt file is refetched and overwritten); writes go through a temp file and a rename, so a
 * crash never leaves a half-written model under its final name.
 */
export class DiskModelStore implements ModelStore {
  constructor(readonly dir: string) {}

  async get(sha256: string): Promise<Uint8Array | undefined> {
    if (!SHA256.test(sha256)) return undefined;
    try {
      const buf = await readFile(join(this.dir, sha256));
      return new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
  }

  async put(sha256: string, bytes: Uint8Array): Promise<void> {
    if (!SHA256.test(sha256)) throw new Error('model cache keys are lower-case sha256 hex');
    await mkdir(this.dir, { recursive: true });
    const tmp = join(this.dir, `${sha256}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
    await writeFile(tmp, bytes);
    await rename(tmp, join(this.dir, sha256));
  }
}

/** The onnxruntime-node version, read without loading its native binding. */
function ortPackageVersion(): string | undefined {
  try {
    return (createRequire(import.meta.url)('onnxruntime-node/package.json') as { version: string }).version;
  } catch {
    return undefined;
  }
}

/** Refusals that no retry can fix, by what the node's operator has to change. */
type Refusal = 'token' | 'identity' | 'handshake';

/** Classifies a refusal by the hub (a connect_error message or a register error) or undefined. */
export function refusalKind(message: string, code?: unknown): Refusal | undefined {
  const text = `${message} ${typeof code === 'string' ? code : ''}`;
  if (/secret|identity|another worker|belongs to/i.test(text)) return 'identity';
  if (/token|unauthori[sz]ed|forbidden|\bauth/i.test(text)) return 'token';
  if (/bad handshake/i.test(text)) return 'handshake';
  return undefined;
}

/**
 * Ends the process at once, as a second Ctrl-C asks. Not `process.exit()`: that tears down the
 * session threads' environments while onnxruntime is inside a run, whose completion then throws a
 * `Napi::Error` that aborts the process ("terminate called after throwing..."). Dying of the signal
 * itself runs no such teardown, and the exit status says so (130 for SIGINT).
 */
function quitNow(_code: 130): void {
  process.removeAllListeners('SIGINT');
  process.kill(process.pid, 'SIGINT');
}

/** Starts a native node; see the file comment. Resolves once the backend is ready and connecting. */
export async function runNode(opts: NodeOptions): Promise<NodeHandle> {
  const log = opts.logger ?? createLogger('node');
  const hub = opts.hub.replace(/\/+$/, '');
  const concurrency = opts.concurrency ?? 1;
  const choice = opts.backend ?? 'auto';
  const cores = availableParallelism();
  const identity = await claimIdentity(opts.stateDir ?? join(homedir(), '.shardhub'), hub, opts.id, log);
  const store = new DiskModelStore(opts.cacheDir ?? join(homedir(), '.cache', 'shardhub', 'models'));

  let gpu: GpuInfo | undefined;
  let detectGpu: (() => Promise<GpuInfo | undefined>) | undefined;
  let backendFactory: BackendFactory;
  if (choice === 'sim') {
    backendFactory = async (): Promise<Backend> => {
      const { SimBackend } = await import('./sim-backend.ts');
      const sim = await SimBackend.create({ ...opts.sim, die: opts.simDie });
      // Straggler scenarios: `kill -USR1 <pid>` slows the node down from that moment.
      if (opts.handleSignals) process.on('SIGUSR1', () => sim.slowNow());
      return sim;
    };
  } else {
    // Loaded only when needed: a sim node never loads onnxruntime's native libraries.
    const ortMod = await import('./ort-backend.ts');
    detectGpu = () => ortMod.detectNvidiaGpu();
    gpu = await detectGpu();
    backendFactory = () => ortMod.OrtBackend.create({ prefer: choice, concurrency, cores, gpu: gpu ?? null });
  }
  const corrupt = opts.corrupt;
  if (corrupt && corrupt.rate > 0) {
    const honest = backendFactory;
    backendFactory = async () => (await import('./fault.ts')).corrupting(await honest(), corrupt);
    log.warn({ corrupt }, 'fault injection: this node corrupts outputs on purpose');
  }

  // The data channel reserves places for inputs in the backend's staging buffers.
  let backend: Backend | undefined;
  const makeBackend = backendFactory;
  backendFactory = async () => {
    backend = await makeBackend();
    // A WebGPU node reports its adapter, as a browser does: the hub's GPU priors read its name,
    // --min-gpu-memory its memory.
    const adapter = (backend as { adapter?: AdapterInfo }).adapter;
    if (backend.name === 'webgpu' && adapter) {
      capabilities.gpu = adapterCapabilities(adapter);
      log.info({ adapter: capabilities.gpu }, 'WebGPU adapter');
    }
    return backend;
  };
  const wantsChannel = opts.dataChannel !== false && new URL(hub).protocol === 'http:';

  const capabilities: Capabilities = {
    hostname: hostname().slice(0, 128),
    cores,
    memoryBytes: totalmem(),
    ortVersion: ortPackageVersion(),
    ...(gpu
      ? { gpu: { name: gpu.name.slice(0, 128), vendor: 'NVIDIA', memoryBytes: gpu.memoryTotalBytes } }
      : {}),
  };

  const auth: WorkerAuth = { workerId: identity.workerId, workerSecret: identity.workerSecret };
  if (opts.token) auth.token = opts.token;
  const rc = opts.reconnect ?? {};
  const delayMs = rc.delayMs ?? 500;
  const maxDelayMs = rc.maxDelayMs ?? 10_000;
  const jitter = rc.randomizationFactor ?? 0.5;
  const socket = io(`${hub}/worker`, {
    auth,
    autoConnect: false,
    // WebSocket only, its frames sent without masking (native/ws-transport.ts).
    transports: [UnmaskedWebSocket],
    reconnection: true,
    reconnectionDelay: delayMs,
    reconnectionDelayMax: maxDelayMs,
    randomizationFactor: jitter,
    // Accept shard:assign packets with more than Socket.IO's default 10 tensors.
    parser: shardhubParser,
  }) as WorkerSocket;

  let gpuUsed = gpu?.memoryUsedBytes;
  let gpuTimer: ReturnType<typeof setInterval> | undefined;
  if (gpu && detectGpu) {
    const detect = detectGpu;
    gpuTimer = setInterval(() => {
      void detect().then((g) => {
        if (g) gpuUsed = g.memoryUsedBytes;
      });
    }, 10_000);
    gpuTimer.unref();
  }
  const load = (): Heartbeat['load'] => {
    const total = totalmem();
    return {
      cpu: (loadavg()[0] ?? 0) / cores,
      memUsedBytes: total - freemem(),
      memTotalBytes: total,
      ...(gpuUsed !== undefined ? { gpuMemUsedBytes: gpuUsed } : {}),
    };
  };

  const agent = new WorkerAgent({
    socket,
    backend: backendFactory,
    store,
    hubUrl: hub,
    register: {
      kind: 'native',
      name: (opts.name ?? hostname()).slice(0, 128) || 'node',
      ...(opts.pool ? { pool: opts.pool } : {}),
      ...(wantsChannel ? { dataChannel: true } : {}),
      capabilities,
    },
    logger: log,
    concurrency,
    // onnxruntime runs in session threads: with the next batch already posted, a session thread
    // starts it the moment the last one ends instead of idling for a round trip through the event
    // loop. A sim node computes on timers
    // in this thread, where a second batch would run alongside the first.
    batchesInFlight: choice === 'sim' ? 1 : 2,
    // Results wait up to 60 ms for the next batch's, while more are coming: half the messages, and
    // their per-message cost, on both sides. 60 ms: a fifth of the hub's prefetch (0.3 s), which its
    // refills wait on. A sim node's items take no time: not held.
    holdMs: choice === 'sim' ? 0 : 60,
    load,
    fetchHeaders: opts.token ? { authorization: `Bearer ${opts.token}` } : undefined,
  });

  let settle!: { resolve: () => void; reject: (err: Error) => void };
  const done = new Promise<void>((resolve, reject) => {
    settle = { resolve, reject };
  });
  done.catch(() => undefined); // callers may not await `done`; a fatal stop must not crash the process
  let fatal: NodeFatalError | undefined;
  let failures = 0;

  const stopping = () => fatal !== undefined || agent.status === 'closed';
  // Socket.IO stops reconnecting after a server-side disconnect or a middleware refusal.
  const reconnect = new Reconnector({ socket, log, delayMs, maxDelayMs, jitter, stopping });
  const stopFatal = (err: NodeFatalError) => {
    if (fatal) return;
    fatal = err;
    log.error({ error: err.message }, 'node stopping');
    void agent.close();
  };

  /** Stops the node when a refusal cannot be fixed by retrying; returns whether it did. */
  const refused = (rawMessage: string, code?: unknown): boolean => {
    const kind = refusalKind(rawMessage, code);
    const message = clean(rawMessage);
    if (kind === 'token') {
      stopFatal(
        new NodeFatalError(
          `the hub refused this node's join token (${message}); pass the hub's join token with --token or SHARDHUB_JOIN_TOKEN`,
        ),
      );
    } else if (kind === 'identity') {
      stopFatal(
        new NodeFatalError(
          `the hub refused this node's identity (${message}); another node may be using ${identity.file}, or it belongs to another hub: use --id/--state or delete it`,
        ),
      );
    } else if (kind === 'handshake') {
      stopFatal(new NodeFatalError(`the hub refused this node's handshake (${message})`));
    }
    return kind !== undefined;
  };

  // The job this node last got items of, for its status line.
  let current: { jobId: string; model: string } | undefined;
  socket.on('shard:assign', (shard) => {
    current = { jobId: shard.jobId, model: shard.model.name };
  });
  // On a terminal, one line at the bottom says what the node is doing.
  const status =
    opts.handleSignals &&
    process.stdout.isTTY &&
    (process.env.SHARDHUB_LOG_FORMAT ?? 'human') === 'human' &&
    process.env.SHARDHUB_STATUS_LINE !== 'off'
      ? new TerminalStatus(process.stdout)
      : undefined;

  socket.on('connect', () => {
    reconnect.reset();
    failures = 0;
    log.info({ hub: clean(hub), workerId: identity.workerId }, 'connected to hub');
  });
  socket.on('disconnect', (reason) => {
    channel?.close();
    if (reason === 'io server disconnect') reconnect.later();
  });

  // The data channel opens after each registration and ends with the connection it belongs to.
  let channel: DataChannelClient | undefined;
  agent.on('registered', (reply) => {
    channel?.close();
    const offer = reply.dataChannel;
    if (!offer) return;
    try {
      const c: DataChannelClient = new DataChannelClient({
        hub,
        path: offer.path,
        ticket: offer.ticket,
        reserve: (model, inputs) => backend?.reserve?.(model, inputs),
        onShard: (shard, items) => {
          current = { jobId: shard.jobId, model: shard.model.name };
          agent.assign(shard, items);
        },
        onOpen: () => log.info({}, 'data channel open'),
        onClose: (err, opened) => {
          if (channel === c) channel = undefined;
          if (!err) return;
          if (!opened) {
            log.warn({ error: clean(err.message) }, 'no data channel; large inputs come over Socket.IO');
            return;
          }
          // Frames in flight may be lost: the hub requeues this connection's items when it goes.
          log.warn({ error: clean(err.message) }, 'data channel lost; reconnecting');
          if (socket.connected) {
            socket.disconnect();
            reconnect.later();
          }
        },
      });
      channel = c;
    } catch (err) {
      log.warn({ error: clean((err as Error).message) }, 'no data channel; large inputs come over Socket.IO');
    }
  });
  socket.on('connect_error', (err: Error & { data?: { code?: unknown } }) => {
    failures++;
    if (socket.active) {
      // A network-level failure: Socket.IO retries by itself with backoff.
      if (failures === 1 || failures % 10 === 0) {
        log.warn({ hub: clean(hub), error: clean(err.message), failures }, 'cannot reach hub; retrying');
      }
      return;
    }
    const message = clean(err.message);
    if (refused(err.message, err.data?.code)) return;
    log.warn({ error: message }, 'hub refused the connection');
    reconnect.later();
  });
  // The hub checks the join token at registration: it refuses, then disconnects.
  agent.on('error', (err) => {
    if (!refused(err.message, err.code))
      log.error({ code: clean(err.code), error: clean(err.message) }, 'hub refused registration');
  });

  const signals: [NodeJS.Signals, () => void][] = [];
  const cleanup = () => {
    status?.stop();
    identity.release();
    reconnect.cancel();
    if (gpuTimer !== undefined) clearInterval(gpuTimer);
    for (const [sig, fn] of signals) process.off(sig, fn);
    channel?.close();
    socket.off();
    socket.disconnect();
  };
  agent.on('closed', () => {
    cleanup();
    if (fatal) settle.reject(fatal);
    else settle.resolve();
  });

  if (opts.handleSignals) {
    // The first signal drains. A Ctrl-C a second or more later quits at once; signals sooner than
    // that are copies of the first (a terminal's Ctrl-C reaches every process of the foreground
    // group, and npm passes it on again), and a SIGTERM after a drain began changes nothing.
    let first = 0;
    const onSignal = (sig: NodeJS.Signals) => {
      const now = Date.now();
      if (first === 0) {
        first = now;
        log.info(
          { signal: sig },
          'draining: unstarted items go back to the hub, running ones finish (Ctrl-C again to quit now)',
        );
        void agent.drain();
      } else if (sig === 'SIGINT' && now - first >= ECHO_MS) {
        log.warn({ signal: sig }, 'exiting now');
        quitNow(130);
      }
    };
    for (const sig of ['SIGINT', 'SIGTERM'] as const) {
      const fn = () => onSignal(sig);
      signals.push([sig, fn]);
      process.on(sig, fn);
    }
  }

  log.info(
    {
      hub: clean(hub),
      workerId: identity.workerId,
      backend: choice,
      concurrency,
      identityFile: identity.file,
    },
    'starting node',
  );
  try {
    await agent.start();
  } catch (err) {
    cleanup();
    throw err;
  }
  log.info({ backend: agent.stats.backend, reason: agent.stats.backendReason }, 'backend ready');
  status?.start(() => statusText(agent.stats, current));

  return {
    workerId: identity.workerId,
    agent,
    done,
    drain: () => agent.drain(),
    close: () => agent.close(),
  };
}
