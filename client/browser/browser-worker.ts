/**
 * A browser worker: everything a contributor tab needs, built around the shared {@link WorkerAgent}
 * (the browser's counterpart of `native/node.ts`).
 *
 * - Identity: per tab, in `sessionStorage` (`identity.ts`): a reload or a reconnect is the same
 *   worker; another tab is another worker.
 * - Backend: WebGPU or WASM chosen by `gpu.ts`, run in a Web Worker (`inference/web-backend.ts`).
 * - Connection: Socket.IO to `${hub}/worker` (with `shardhubParser`), reconnecting with
 *   exponential backoff and jitter. Socket.IO does not reconnect after a server-side disconnect or
 *   a refusal by the hub's middleware; this module does, with its own backoff, except when the hub
 *   refuses the contributor token (retrying cannot help). An identity the hub refuses is replaced.
 * - Models cached by sha256 in Cache Storage (`model-store.ts`), in memory where that is missing.
 */
import { io } from 'socket.io-client';
import type { Capabilities, WorkerAuth } from '../../protocol/events.ts';
import { shardhubParser } from '../../protocol/socket-parser.ts';
import { WorkerAgent, type WorkerSocket } from '../../worker/agent.ts';
import { Reconnector } from '../../worker/reconnect.ts';
import { errorMessage, type WorkerLogger } from '../../worker/backend.ts';
import { MemoryModelStore, type ModelStore } from '../../worker/model-cache.ts';
import { WebBackend } from '../inference/web-backend.ts';
import { parseFigures, type WorkerReport } from './figures.ts';
import {
  chooseBackend,
  defaultThreads,
  detectWebGpu,
  gpuCapabilities,
  type BackendChoice,
  type GpuReport,
} from './gpu.ts';
import { claimIdentity } from './identity.ts';
import { CacheModelStore } from './model-store.ts';

/** Options of {@link startBrowserWorker}. */
export interface BrowserWorkerOptions {
  /** The hub's base URL (the page's origin when it is served by the hub). */
  hubUrl: string;
  backend?: BackendChoice;
  /** WASM threads (default: half the cores, at most 4). */
  numThreads?: number;
  /** A contributor token, when the hub asks for one. */
  token?: string;
  /** The name shown to operators (default: browser and platform). */
  name?: string;
  /** Where the identity lives (default `sessionStorage`). */
  storage?: Storage;
  logger: WorkerLogger;
  /** Socket.IO reconnection tuning (tests shorten it). */
  reconnect?: { delayMs?: number; maxDelayMs?: number; randomizationFactor?: number };
}

/** A refusal no retry can fix. */
export class ContributorRefusedError extends Error {
  override name = 'ContributorRefusedError';
}

/** A running browser worker. */
export interface BrowserWorker {
  readonly agent: WorkerAgent;
  readonly backend: WebBackend;
  readonly gpu: GpuReport;
  readonly workerId: string;
  readonly store: 'cache' | 'memory';
  /** Its jobs and probation, from the hub's `worker:figures` (undefined until it sends any). */
  readonly figures: WorkerReport | undefined;
  /** Called when figures arrive. */
  onFigures(fn: (figures: WorkerReport) => void): () => void;
  /** Called when the worker stops for good (with the reason). */
  onFatal(fn: (err: Error) => void): () => void;
  close(): Promise<void>;
}

/** A readable name for this browser, e.g. "Chrome 126 on Linux". */
export function browserName(): string {
  const nav = navigator as Navigator & {
    userAgentData?: { brands?: { brand: string; version: string }[]; platform?: string };
  };
  const brand =
    nav.userAgentData?.brands?.find((b) => !/not.?a.?brand|chromium/i.test(b.brand)) ??
    nav.userAgentData?.brands?.find((b) => /chromium/i.test(b.brand));
  const platform = nav.userAgentData?.platform || navigator.platform || 'unknown';
  const browser = brand
    ? `${brand.brand} ${brand.version}`
    : (/Firefox\/(\d+)/.exec(navigator.userAgent)?.[0]?.replace('/', ' ') ?? 'browser');
  return `${browser} on ${platform}`.slice(0, 128);
}

/** Starts a browser worker; resolves once the backend runs and the socket is connecting. */
export async function startBrowserWorker(opts: BrowserWorkerOptions): Promise<BrowserWorker> {
  const log = opts.logger;
  const hub = opts.hubUrl.replace(/\/+$/, '');
  const claimed = await claimIdentity(opts.storage ?? sessionStorage);
  const gpu = await detectWebGpu();
  const choice = chooseBackend(opts.backend ?? 'auto', gpu);
  const numThreads =
    opts.numThreads ?? defaultThreads(navigator.hardwareConcurrency || 1, crossOriginIsolated);
  log.info({ backend: choice.backend, reason: choice.reason, numThreads }, 'backend chosen');

  const authFor = (): WorkerAuth => ({
    ...claimed.identity,
    ...(opts.token ? { token: opts.token } : {}),
  });
  const rc = opts.reconnect ?? {};
  const delayMs = rc.delayMs ?? 1000;
  const maxDelayMs = rc.maxDelayMs ?? 15_000;
  const jitter = rc.randomizationFactor ?? 0.5;
  const socket = io(`${hub}/worker`, {
    auth: (cb) => cb(authFor()),
    autoConnect: false,
    transports: ['websocket', 'polling'],
    tryAllTransports: true,
    reconnection: true,
    reconnectionDelay: delayMs,
    reconnectionDelayMax: maxDelayMs,
    randomizationFactor: jitter,
    // Accept shard:assign packets with more than Socket.IO's default 10 tensors.
    parser: shardhubParser,
  }) as WorkerSocket;
  let backend: WebBackend;
  try {
    backend = await WebBackend.create({
      backend: choice.backend,
      reason: choice.reason,
      numThreads,
      logger: log,
      // A provider change (WebGPU given up) changes the worker's speed: register again as the new one.
      onChange: (b) => {
        log.warn({ backend: b.name, reason: b.reason }, 'backend changed; registering again');
        if (socket.connected) {
          socket.disconnect();
          socket.connect();
        }
      },
    });
  } catch (err) {
    claimed.close();
    throw new Error(`onnxruntime-web could not start: ${errorMessage(err)}`, { cause: err });
  }

  const cached = await CacheModelStore.open({ logger: log });
  const store: ModelStore = cached ?? new MemoryModelStore();
  if (!cached) log.warn({}, 'Cache Storage unavailable: models are kept in memory only');

  const memory = (navigator as Navigator & { deviceMemory?: number }).deviceMemory;
  const gpuCaps = gpuCapabilities(gpu);
  const capabilities: Capabilities = {
    cores: navigator.hardwareConcurrency || 1,
    memoryBytes: typeof memory === 'number' ? memory * 2 ** 30 : 0,
    ortVersion: backend.info?.ortVersion,
    userAgent: navigator.userAgent.slice(0, 512),
    ...(gpuCaps ? { gpu: gpuCaps } : {}),
  };

  const agent = new WorkerAgent({
    socket,
    backend: async () => backend,
    store,
    hubUrl: hub,
    register: {
      kind: 'browser',
      name: (opts.name ?? browserName()).slice(0, 128) || 'browser',
      capabilities,
    },
    logger: log,
    concurrency: 1,
    // The inference worker runs requests in order: with the next batch already posted, it starts
    // that batch the moment one ends instead of waiting for this thread to send it, which is where
    // a WASM tab lost time against standalone onnxruntime-web. WebGPU keeps one: it keeps up with
    // standalone without a second, and with two in flight its device-loss handling lost failure
    // reports now and then (a cause not found yet; see the commit that made this choice).
    batchesInFlight: choice.backend === 'wasm' ? 2 : 1,
    fetchHeaders: opts.token ? { authorization: `Bearer ${opts.token}` } : undefined,
  });

  let figures: WorkerReport | undefined;
  const figureListeners = new Set<(f: WorkerReport) => void>();
  const fatalListeners = new Set<(e: Error) => void>();
  let fatal: Error | undefined;
  let failures = 0;

  const stopping = () => fatal !== undefined || agent.status === 'closed';
  const reconnect = new Reconnector({ socket, log, delayMs, maxDelayMs, jitter, stopping });
  const stopFatal = (err: Error) => {
    if (fatal) return;
    fatal = err;
    log.error({ error: err.message }, 'worker stopping');
    for (const l of fatalListeners) l(err);
    void agent.close();
  };
  /** Handles a refusal by the hub; returns whether it was one. */
  const refused = (message: string): boolean => {
    if (/belongs to another worker|secret|identity/i.test(message)) {
      const renewed = claimed.renew();
      log.warn(
        { workerId: renewed.workerId },
        'the hub refused this tab’s identity; joining as a new worker',
      );
      reconnect.later();
      return true;
    }
    if (/token|unauthori[sz]ed|forbidden/i.test(message)) {
      stopFatal(
        new ContributorRefusedError(
          `the hub refused this page (${message.slice(0, 200)}); ask its operator for a contributor link`,
        ),
      );
      return true;
    }
    return false;
  };

  socket.on('connect', () => {
    reconnect.reset();
    failures = 0;
    log.info({ workerId: claimed.identity.workerId }, 'connected to hub');
  });
  socket.on('disconnect', (reason) => {
    log.warn({ reason }, 'disconnected');
    if (reason === 'io server disconnect') reconnect.later();
  });
  socket.on('connect_error', (err: Error) => {
    failures++;
    if (socket.active) {
      if (failures === 1 || failures % 10 === 0)
        log.warn({ error: err.message, failures }, 'cannot reach hub; retrying');
      return;
    }
    if (refused(err.message)) return;
    log.warn({ error: err.message }, 'hub refused the connection');
    reconnect.later();
  });
  agent.on('error', (err) => {
    if (!refused(err.message)) log.error({ code: err.code, error: err.message }, 'hub refused registration');
  });
  // Typed in the protocol, still parsed defensively: see figures.ts.
  socket.on('worker:figures', (payload: unknown) => {
    const parsed = parseFigures(payload);
    if (!parsed) return;
    figures = parsed;
    for (const l of figureListeners) l(parsed);
  });
  agent.on('closed', () => {
    reconnect.cancel();
    claimed.close();
  });

  try {
    await agent.start();
  } catch (err) {
    claimed.close();
    await backend.dispose();
    throw new Error(`the worker could not start: ${errorMessage(err)}`, { cause: err });
  }

  return {
    agent,
    backend,
    gpu,
    get workerId() {
      return claimed.identity.workerId;
    },
    store: cached ? 'cache' : 'memory',
    get figures() {
      return figures;
    },
    onFigures(fn) {
      figureListeners.add(fn);
      return () => figureListeners.delete(fn);
    },
    onFatal(fn) {
      fatalListeners.add(fn);
      return () => fatalListeners.delete(fn);
    },
    close: () => agent.close(),
  };
}
