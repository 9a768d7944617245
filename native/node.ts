/**
 * A native node: everything `shardhub node` needs, built around the shared {@link WorkerAgent}.
 *
 * - Identity: `--id`, else a generated id; either way the secret is persisted (`identity.ts`), so
 *   a restarted node is the same worker to the hub.
 * - Connection: `worker/connection.ts`, to one hub or the next of a list, reconnecting with
 *   backoff; a refusal no retry can fix (join token, identity, protocol version) stops the node with
 *   a {@link NodeFatalError} (`refusal`).
 * - Models cached on disk by sha256 (`model-cache.ts`; verified when read, by `fetchModel`).
 * - Capabilities and heartbeat load figures from `node:os` and `nvidia-smi`.
 */
import { createRequire } from 'node:module';
import { availableParallelism, freemem, homedir, hostname, loadavg, totalmem } from 'node:os';
import { join } from 'node:path';
import type { Capabilities, Heartbeat, WorkerAuth } from '../protocol/events.ts';
import { clean, createLogger, type Logger } from '../common/logger.ts';
import { WorkerAgent } from '../worker/agent.ts';
import { HubConnection } from '../worker/connection.ts';
import { ErrorCode } from '../protocol/errors.ts';
import type { Backend, BackendFactory } from '../worker/backend.ts';
import type { GpuInfo } from './ort-backend.ts';
import { adapterCapabilities, type AdapterInfo } from './gpu-probe.ts';
import type { SimOptions } from './sim-backend.ts';
import type { CorruptOptions } from './fault.ts';
import { asRealGpu, gpuFaultRig, GPU_FAULT_ENV } from './gpu-fault.ts';
import { UnmaskedWebSocket } from './ws-transport.ts';
import { DataChannelClient } from './data-channel.ts';
import { releaseSignals } from '../common/early-signals.mjs';
import { ECHO_MS } from '../common/relaunch.ts';
import { statusText, TerminalStatus } from './status.ts';
import { NodeFatalError } from './errors.ts';
import { claimIdentity } from './identity.ts';
import { DiskModelStore } from './model-cache.ts';

/** Which backend a node runs: `auto` is CUDA, else a real GPU through WebGPU, else CPU (`backend-select.ts`). */
export type NodeBackendChoice = 'auto' | 'cpu' | 'cuda' | 'webgpu' | 'sim';

/** Options of {@link runNode} (the CLI's flags, parsed and validated). */
export interface NodeOptions {
  /**
   * The hub's base URL, e.g. `http://hub.example:8080`, or several: after a connection loss the
   * node tries the next one (`worker/connection.ts`). The first one names the identity file.
   */
  hub: string | readonly string[];
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
  /**
   * The local address both connections start from (default: the system's choice). Behind a
   * balancer that hashes the client's address, nodes sharing a machine but not an address go to
   * different hubs, and a node's data channel meets its Socket.IO connection on one hub.
   */
  localAddress?: string;
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

/** The onnxruntime-node version, read without loading its native binding. */
function ortPackageVersion(): string | undefined {
  try {
    return (createRequire(import.meta.url)('onnxruntime-node/package.json') as { version: string }).version;
  } catch {
    return undefined;
  }
}

/**
 * What a refusal by the hub means to a node: the refusals no retry can fix stop it, each with what
 * its operator has to change; the others (rate limits, a failing hub) are retried.
 */
export function refusal(code: ErrorCode, message: string, identityFile: string): NodeFatalError | undefined {
  switch (code) {
    case ErrorCode.Unauthorized:
      return new NodeFatalError(
        `the hub refused this node's join token (${message}); pass the hub's join token with --token or SHARDHUB_JOIN_TOKEN`,
      );
    case ErrorCode.IdentityTaken:
      return new NodeFatalError(
        `the hub refused this node's identity (${message}); another node may be using ${identityFile}, or it belongs to another hub: use --id/--state or delete it`,
      );
    case ErrorCode.BadHandshake:
      return new NodeFatalError(`the hub refused this node's handshake (${message})`);
    case ErrorCode.Version:
      return new NodeFatalError(
        `the hub speaks another protocol version (${message}); install the hub's shardhub version on this node`,
      );
    default:
      return undefined;
  }
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
  const hubs = (typeof opts.hub === 'string' ? [opts.hub] : [...opts.hub]).map((h) => h.replace(/\/+$/, ''));
  if (hubs.length === 0) throw new NodeFatalError('no hub to connect to: give --hub URL');
  const firstHub = hubs[0] as string;
  const concurrency = opts.concurrency ?? 1;
  const choice = opts.backend ?? 'auto';
  const cores = availableParallelism();
  const identity = await claimIdentity(opts.stateDir ?? join(homedir(), '.shardhub'), firstHub, opts.id, log);
  const store = new DiskModelStore(opts.cacheDir ?? join(homedir(), '.cache', 'shardhub', 'models'));

  let gpu: GpuInfo | undefined;
  /** The GPU fault rig's signal handler, removed when the node stops. */
  let onUsr2: (() => void) | undefined;
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
    const rig = gpuFaultRig();
    backendFactory = async () => {
      const ortBackend = await ortMod.OrtBackend.create({
        prefer: choice,
        concurrency,
        cores,
        gpu: gpu ?? null,
        onChange: (b) => backendChanged(b),
        // The GPU fault rig (tests): a software adapter counts as a real GPU.
        ...(rig ? { webgpu: async () => asRealGpu(await ortMod.probeWebGpuCheck(gpu ?? undefined)) } : {}),
      });
      if (rig) {
        log.warn(
          { env: GPU_FAULT_ENV },
          'GPU fault rig: kill -USR2 this node to make its GPU lose its device',
        );
        onUsr2 = () => {
          log.warn({}, 'GPU fault rig: every GPU run fails as a lost device from now on');
          ortBackend.failGpuRuns();
        };
        process.on('SIGUSR2', onUsr2);
      }
      return ortBackend;
    };
  }
  const corrupt = opts.corrupt;
  if (corrupt && corrupt.rate > 0) {
    const honest = backendFactory;
    backendFactory = async () => (await import('./fault.ts')).corrupting(await honest(), corrupt);
    log.warn({ corrupt }, 'fault injection: this node corrupts outputs on purpose');
  }

  // A failing GPU given up for the CPU (`ort-backend.ts`) is set once the socket exists.
  let backendChanged: (b: Backend) => void = () => undefined;
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
  const wantsChannel = opts.dataChannel !== false && hubs.every((h) => new URL(h).protocol === 'http:');

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
  const conn = new HubConnection({
    hubs,
    auth: () => auth,
    // WebSocket only, its frames sent without masking (native/ws-transport.ts).
    transports: [UnmaskedWebSocket],
    log,
    clean,
    delayMs: rc.delayMs ?? 500,
    maxDelayMs: rc.maxDelayMs ?? 10_000,
    jitter: rc.randomizationFactor ?? 0.5,
    workerId: () => identity.workerId,
    refused: (code, message) => refusal(code, message, identity.file),
    ...(opts.localAddress ? { localAddress: opts.localAddress } : {}),
  });
  const socket = conn.socket;

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
    hubUrl: () => conn.hub,
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
  conn.attach(agent);

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

  // The node's speed changed with its provider: register again with no GPU, to be benchmarked anew
  // (as a browser tab does when it gives WebGPU up for WASM).
  backendChanged = (b) => {
    delete capabilities.gpu;
    log.warn({ backend: b.name, reason: clean(b.reason ?? '') }, 'backend changed; registering again');
    if (socket.connected) {
      socket.disconnect();
      socket.connect();
    }
  };
  socket.on('disconnect', () => channel?.close());

  // The data channel opens after each registration and ends with the connection it belongs to.
  let channel: DataChannelClient | undefined;
  agent.on('registered', (reply) => {
    channel?.close();
    const offer = reply.dataChannel;
    if (!offer) return;
    try {
      const c: DataChannelClient = new DataChannelClient({
        hub: conn.hub,
        path: offer.path,
        ticket: offer.ticket,
        ...(opts.localAddress ? { localAddress: opts.localAddress } : {}),
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
          if (socket.connected) conn.reconnect();
        },
      });
      channel = c;
    } catch (err) {
      log.warn({ error: clean((err as Error).message) }, 'no data channel; large inputs come over Socket.IO');
    }
  });
  const signals: [NodeJS.Signals, () => void][] = [];
  const cleanup = () => {
    status?.stop();
    identity.release();
    if (gpuTimer !== undefined) clearInterval(gpuTimer);
    for (const [sig, fn] of signals) process.off(sig, fn);
    if (onUsr2) process.off('SIGUSR2', onUsr2);
    channel?.close();
    conn.close();
  };
  agent.on('closed', () => {
    cleanup();
    if (conn.fatal) settle.reject(conn.fatal);
    else settle.resolve();
  });

  let held: NodeJS.Signals[] = [];
  let first = 0;
  if (opts.handleSignals) {
    // The first signal drains. A Ctrl-C a second or more later quits at once; signals sooner than
    // that are copies of the first (a terminal's Ctrl-C reaches every process of the foreground
    // group, and npm passes it on again), and a SIGTERM after a drain began changes nothing.
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
    // Signals that came before these handlers (held since the process began) are acted on once
    // the agent runs: draining before it started would leave nothing to drain.
    held = releaseSignals();
  }

  log.info(
    {
      hub: hubs.map((h) => clean(h)).join(','),
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
  // A SIGHUP held (a closed terminal, a parent gone) stops the node as SIGTERM does.
  const early = held[0] === 'SIGHUP' ? 'SIGTERM' : held[0];
  if (early && first === 0) process.emit(early, early);
  status?.start(() => statusText(agent.stats, current));

  return {
    workerId: identity.workerId,
    agent,
    done,
    drain: () => agent.drain(),
    close: () => agent.close(),
  };
}
