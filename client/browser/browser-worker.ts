/**
 * A browser worker: everything a contributor tab needs, built around the shared {@link WorkerAgent}
 * (the browser's counterpart of `native/node.ts`).
 *
 * - Identity: per tab, in `sessionStorage` (`identity.ts`): a reload or a reconnect is the same
 *   worker; another tab is another worker.
 * - Backend: WebGPU or WASM chosen by `gpu.ts`, run in a Web Worker (`inference/web-backend.ts`).
 * - Connection: `worker/connection.ts` (shared with the native node), reconnecting with backoff,
 *   except when the hub refuses the contributor token, the handshake or the protocol version
 *   (retrying cannot help). An identity the hub refuses is replaced.
 * - Models cached by sha256 in Cache Storage (`model-store.ts`), in memory where that is missing.
 */
import type { Capabilities, WorkerAuth } from '../../protocol/events.ts';
import { ErrorCode } from '../../protocol/errors.ts';
import { WorkerAgent } from '../../worker/agent.ts';
import { HubConnection, type RefusalDecision } from '../../worker/connection.ts';
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
  const conn = new HubConnection({
    hubs: [hub],
    auth: authFor,
    transports: ['websocket', 'polling'],
    tryAllTransports: true,
    log,
    delayMs: rc.delayMs ?? 1000,
    maxDelayMs: rc.maxDelayMs ?? 15_000,
    jitter: rc.randomizationFactor ?? 0.5,
    workerId: () => claimed.identity.workerId,
    refused: (code, message) => refusal(code, message),
  });
  const socket = conn.socket;
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
  conn.attach(agent);

  /** What a refusal means to a tab: a new identity, or a stop with what the contributor can do. */
  const refusal = (code: ErrorCode, message: string): RefusalDecision => {
    switch (code) {
      case ErrorCode.IdentityTaken: {
        const renewed = claimed.renew();
        log.warn(
          { workerId: renewed.workerId },
          'the hub refused this tab’s identity; joining as a new worker',
        );
        return 'retry';
      }
      case ErrorCode.Unauthorized:
        return new ContributorRefusedError(
          `the hub refused this page (${message}); ask its operator for a contributor link`,
        );
      case ErrorCode.BadHandshake:
        return new ContributorRefusedError(`the hub refused this page's handshake (${message})`);
      case ErrorCode.Version:
        return new ContributorRefusedError(
          `this page is older or newer than its hub (${message}); reload the page`,
        );
      default:
        return undefined;
    }
  };
  // Typed in the protocol, still parsed defensively: see figures.ts.
  socket.on('worker:figures', (payload: unknown) => {
    const parsed = parseFigures(payload);
    if (!parsed) return;
    figures = parsed;
    for (const l of figureListeners) l(parsed);
  });
  agent.on('closed', () => claimed.close());

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
    onFatal: (fn) => conn.onFatal(fn),
    close: () => agent.close(),
  };
}
