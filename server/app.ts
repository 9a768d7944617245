/**
 * Puts the hub on the network: Express (REST API, model bytes, static pages) and Socket.IO
 * (`/worker` for workers, `/operator` for the dashboard) on one HTTP server.
 * `HubServer.start(config)` is what the CLI and the tests use: port 0 gives a free port.
 */
import express from 'express';
import helmet from 'helmet';
import { existsSync } from 'node:fs';
import { hostname } from 'node:os';
import { createServer, type Server as HttpServer } from 'node:http';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Server } from 'socket.io';
import { DATA_CHANNEL_PATH } from '../protocol/data-channel.ts';
import type { HubToWorkerEvents, InterHubEvents, WorkerToHubEvents } from '../protocol/events.ts';
import { LIMITS } from '../protocol/limits.ts';
import { shardhubParser } from '../protocol/socket-parser.ts';
import { ModelRegistry } from '../models/registry.ts';
import { apiRouter } from './api.ts';
import { loadTokens, type Tokens } from './auth.ts';
import { attachWorkerGateway, type WorkerNamespace, type WorkerSocketData } from './gateway.ts';
import { DEFAULT_HUB_OPTIONS, Hub, type HubOptions } from './hub.ts';
import { createLogger, type Logger } from './logger.ts';
import { metricsRouter } from './metrics.ts';
import { attachOperatorNamespace, type OperatorNamespace } from './operator.ts';
import { openApiDocument } from './openapi.ts';
import { version } from './options.ts';
import { openStore } from './store/open-store.ts';
import { OcrService } from './pipeline.ts';
import { WorkerFigures, workerJson } from './workers.ts';
import type { WorkerView } from '../protocol/operator.ts';
import { createAdapter } from '@socket.io/postgres-adapter';
import pg from 'pg';

const ROOT = resolve(fileURLToPath(import.meta.url), '../..');

/** Several hubs: at most one "work is claimable" message per this long from a hub (see below). */
const CLAIMABLE_EVERY_MS = 100;

/** Everything `shardhub serve` can be told. */
export interface HubConfig {
  host: string;
  port: number;
  dataDir: string;
  /**
   * The store: a `postgres://` URL (several hubs may share it), or a SQLite file; unset, the
   * SQLite file `hub.sqlite` in `dataDir` (see `store/open-store.ts`).
   */
  store?: string;
  modelsDir: string;
  operatorToken?: string;
  joinToken?: string;
  contributorToken?: string;
  corsOrigins: string[];
  hub: Partial<HubOptions>;
  /** Built client pages (vite build output). */
  staticDir: string;
}

/** Defaults for a hub config. */
export function defaultHubConfig(): HubConfig {
  return {
    host: '0.0.0.0',
    port: 8080,
    dataDir: './data',
    modelsDir: join(ROOT, 'models'),
    corsOrigins: [],
    hub: {},
    staticDir: join(ROOT, 'dist', 'client'),
  };
}

/**
 * Security headers, by helmet: its defaults (nosniff, HSTS on https, no referrer, frames denied, a
 * content security policy), with cross-origin isolation (COOP same-origin and COEP require-corp)
 * that lets the contributor page run multi-threaded WASM. The policy allows WebAssembly
 * compilation and blob: workers (onnxruntime-web), inline styles (Lit, uPlot) and WebSockets to
 * the hub itself.
 */
export function securityHeaders(): express.RequestHandler {
  return helmet({
    contentSecurityPolicy: {
      directives: {
        defaultSrc: ["'self'"],
        scriptSrc: ["'self'", "'wasm-unsafe-eval'"],
        workerSrc: ["'self'", 'blob:'],
        styleSrc: ["'self'", "'unsafe-inline'"],
        imgSrc: ["'self'", 'data:', 'blob:'],
        connectSrc: ["'self'", 'ws:', 'wss:', 'blob:', 'data:'],
        objectSrc: ["'none'"],
        frameAncestors: ["'none'"],
        upgradeInsecureRequests: null,
      },
    },
    crossOriginOpenerPolicy: { policy: 'same-origin' },
    crossOriginEmbedderPolicy: { policy: 'require-corp' },
    referrerPolicy: { policy: 'no-referrer' },
    frameguard: { action: 'deny' },
  });
}

/**
 * The hub's Socket.IO server, typed with the `/worker` namespace's event maps and socket data.
 * Socket.IO types every `io.of()` with the server's generics; the `/operator` namespace, which has
 * maps of its own, is typed where it is taken (`OperatorNamespace`), as socket.io's maintainers
 * advise (socketio/socket.io#4287).
 */
export type HubIo = Server<WorkerToHubEvents, HubToWorkerEvents, InterHubEvents, WorkerSocketData>;

/** A running hub: HTTP + sockets + core. */
export class HubServer {
  private closing?: Promise<void>;

  private constructor(
    readonly hub: Hub,
    readonly http: HttpServer,
    readonly io: HubIo,
    readonly tokens: Tokens,
    readonly log: Logger,
    readonly url: string,
    readonly port: number,
    private readonly stopOperator: () => void,
    private readonly closeAdapter: () => Promise<void>,
  ) {}

  /** Opens the store, loads models, listens. */
  static async start(partial: Partial<HubConfig> = {}, log = createLogger('hub')): Promise<HubServer> {
    const config = { ...defaultHubConfig(), ...partial };
    const dataDir = resolve(config.dataDir);
    const tokens = loadTokens(dataDir, { operatorToken: config.operatorToken, joinToken: config.joinToken });
    const models = await ModelRegistry.open({
      modelsDir: config.modelsDir,
      uploadDir: join(dataDir, 'models'),
    });
    for (const p of models.problems()) log.warn({ problem: p }, 'model skipped');
    const store = await openStore(config.store, { dataDir });
    let hub: Hub;
    try {
      if (store.severalHubs) {
        // One set of tokens for every hub on the store: the first hub's (explicit ones win here).
        const shared = await store.initTokens(tokens);
        tokens.operatorToken = config.operatorToken ?? shared.operatorToken;
        tokens.joinToken = config.joinToken ?? shared.joinToken;
        // Uploaded models too: any hub runs and serves a model uploaded through any other.
        await models.share(store);
        for (const p of models.problems()) log.warn({ problem: p }, 'model skipped');
      }
      hub = await Hub.open(
        store,
        models,
        log,
        { ...DEFAULT_HUB_OPTIONS, ...config.hub },
        {
          url: `${hostname()}:${config.port}`,
        },
      );
    } catch (err) {
      await store.close();
      throw err;
    }

    const app = express();
    app.disable('x-powered-by');
    app.use(securityHeaders());
    app.use((req, res, next) => {
      const origin = req.headers.origin;
      if (origin && config.corsOrigins.includes(origin)) {
        res.setHeader('Access-Control-Allow-Origin', origin);
        res.setHeader('Vary', 'Origin');
        res.setHeader('Access-Control-Allow-Headers', 'Authorization, Content-Type');
        res.setHeader('Access-Control-Allow-Methods', 'GET, POST, PATCH');
        if (req.method === 'OPTIONS') return void res.sendStatus(204);
      }
      next();
    });
    // The API's OpenAPI document is public, like /api/health (server/openapi.ts).
    const openApi = openApiDocument(version());
    app.get('/api/openapi.json', (_req, res) => void res.json(openApi));
    // Several hubs: what crosses hubs (dashboards' live updates, every hub's workers) goes through
    // Socket.IO's Postgres adapter (LISTEN/NOTIFY on the store's database); `io` is made below.
    const peers: { io?: HubIo } = {};
    const remoteWorkers = hub.shared
      ? async (): Promise<WorkerView[]> => {
          try {
            const replies = (peers.io as HubIo).serverSideEmitWithAck('hub:workers');
            const late = new Promise<never>((_, fail) =>
              setTimeout(() => fail(new Error('no answer within 2 s')), 2000).unref(),
            );
            return (await Promise.race([replies, late])).flat();
          } catch (err) {
            log.warn({ err }, 'not every hub listed its workers in time');
            return [];
          }
        }
      : undefined;
    app.use('/api', apiRouter(hub, tokens.operatorToken, remoteWorkers));
    // The OCR service now, not on the first request: it rebuilds the runs a restart interrupted.
    await OcrService.of(hub).catch((err: unknown) =>
      log.warn(
        { err: (err as Error).message },
        'OCR pipeline unavailable (are the PaddleOCR models installed?)',
      ),
    );
    app.use(metricsRouter(hub, tokens.operatorToken));
    if (existsSync(config.staticDir)) {
      app.use(express.static(config.staticDir, { index: 'index.html' }));
      app.get('/dashboard', (_req, res) => res.sendFile(join(config.staticDir, 'dashboard.html')));
    } else {
      app.get(['/', '/dashboard'], (_req, res) => {
        res
          .type('text')
          .send(
            'shardhub hub is running, but its pages are not built: run `npm run build` (npm start does it by itself).',
          );
      });
    }

    const http = createServer(app);
    // Idle keep-alive connections are closed by the client first: a client (fetch, a balancer)
    // keeps one a few seconds, and a hub that closed it at the same moment would reset the next
    // request the client sends on it. Longer than HAProxy's and undici's idle times.
    http.keepAliveTimeout = 65_000;
    http.headersTimeout = 66_000;
    // Native nodes' data channels share the hub's port (protocol/data-channel.ts). Socket.IO's own
    // upgrade listener ignores other paths.
    http.on('upgrade', (req, socket, head) => {
      if ((req.url ?? '').split('?')[0] === DATA_CHANNEL_PATH) hub.data.accept(req, socket, head);
    });
    const io = new Server<WorkerToHubEvents, HubToWorkerEvents, InterHubEvents, WorkerSocketData>(http, {
      maxHttpBufferSize: LIMITS.socketMessageBytes,
      parser: shardhubParser,
      cors: { origin: config.corsOrigins },
      pingInterval: Math.max(
        1000,
        Math.floor((config.hub.heartbeatMs ?? DEFAULT_HUB_OPTIONS.heartbeatMs) * 2),
      ),
      pingTimeout: Math.max(2000, config.hub.offlineAfterMs ?? DEFAULT_HUB_OPTIONS.offlineAfterMs),
    });
    let adapterPool: pg.Pool | undefined;
    if (hub.shared && config.store) {
      adapterPool = new pg.Pool({ connectionString: config.store, max: 2 });
      adapterPool.on('error', (err) => log.warn({ err }, 'hub-to-hub channel: connection failed'));
      // Hubs starting together race to create the adapter's table: IF NOT EXISTS is not atomic in
      // PostgreSQL, and the loser's "already exists" (of the table, or of its row type, or the
      // catalog's unique key) means what it wanted is there.
      await adapterPool
        .query(
          `CREATE TABLE IF NOT EXISTS socket_io_attachments (
             id bigserial UNIQUE, created_at timestamptz DEFAULT NOW(), payload bytea)`,
        )
        .catch((err: { code?: string }) => {
          if (!['42P07', '42710', '23505'].includes(err.code ?? '')) throw err;
        });
      io.adapter(
        createAdapter(adapterPool, {
          errorHandler: (err) => log.warn({ err }, 'hub-to-hub channel failed'),
        }),
      );
      peers.io = io;
      // Pipelines: an OCR run lives on the hub that started it, and any hub's workers may run its
      // stage jobs' items: what is stored here for a stage job is passed on to every other hub.
      hub.on('items:committed', (jobId, ids) => {
        const job = hub.jobs.activeRecords().find((j) => j.id === jobId);
        if (job?.options.step !== undefined) io.serverSideEmit('hub:committed', jobId, ids);
      });
      io.on('hub:committed', (jobId, ids) => {
        if (typeof jobId !== 'string' || !Array.isArray(ids) || !ids.every((id) => Number.isInteger(id)))
          return;
        OcrService.of(hub).then(
          (svc) => svc.committed(jobId, ids),
          () => undefined, // no OCR on this hub: no run of it to tell
        );
      });
      // Claim passes wait while they find nothing (`hub/claims.ts`): what may make work claimable
      // on one hub wakes the others' at once. A burst (a pipeline appending as results arrive)
      // sends one message, and one more at its end.
      let lastClaimable = 0;
      let claimableLater: NodeJS.Timeout | undefined;
      const tellClaimable = () => {
        claimableLater = undefined;
        lastClaimable = Date.now();
        io.serverSideEmit('hub:claimable');
      };
      hub.on('chunks:claimable', () => {
        const wait = lastClaimable + CLAIMABLE_EVERY_MS - Date.now();
        if (wait <= 0) tellClaimable();
        else claimableLater ??= setTimeout(tellClaimable, wait).unref();
      });
      hub.on('hubs:gone', (local) => {
        if (local) io.serverSideEmit('hub:gone');
      });
      io.on('hub:claimable', () => hub.peerClaimable());
      io.on('hub:gone', () => hub.peerGone());
      io.on('hub:workers', (ack) => {
        const figures = WorkerFigures.of(hub);
        ack(
          [...hub.workers.values()].map((w) => ({
            ...workerJson(w, figures),
            probation: hub.probationOf(w.id),
            hub: hub.hubId,
          })),
        );
      });
    }
    const workers: WorkerNamespace = io.of('/worker');
    attachWorkerGateway(workers, hub, {
      joinToken: tokens.joinToken,
      contributorToken: config.contributorToken,
    });
    const operators: OperatorNamespace = io.of('/operator');
    const stopOperator = attachOperatorNamespace(operators, hub, tokens.operatorToken);

    await new Promise<void>((ok, fail) => {
      http.once('error', fail);
      http.listen(config.port, config.host, () => ok());
    });
    const addr = http.address();
    const port = typeof addr === 'object' && addr ? addr.port : config.port;
    // Listed in the hubs view with the port it really got (the registration had the one asked for).
    await hub
      .advertise(`${hostname()}:${port}`)
      .catch((err: unknown) => log.warn({ err }, 'could not list the hub with its port'));
    const shownHost = config.host === '0.0.0.0' || config.host === '::' ? 'localhost' : config.host;
    const server = new HubServer(
      hub,
      http,
      io,
      tokens,
      log,
      `http://${shownHost}:${port}`,
      port,
      stopOperator,
      async () => {
        await adapterPool?.end();
      },
    );
    log.info({ url: server.url, dataDir }, 'hub listening');
    return server;
  }

  /** Stops accepting, disconnects everyone, closes the store. Idempotent. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      await this.hub.close();
      this.stopOperator();
      this.io.disconnectSockets(true);
      // io.close() stops the HTTP server once its namespaces are closed, and its callback waits
      // for every connection to end: a request still in progress (an upload, a download, a
      // browser's keep-alive request) held it forever. So what is left is dropped until it ends;
      // a connection accepted before the server stopped listening is dropped on the next round.
      let closed = false;
      const done = new Promise<void>((ok) => this.io.close(() => ok())).then(() => (closed = true));
      while (!closed) {
        this.http.closeAllConnections?.();
        await Promise.race([done, new Promise((ok) => setTimeout(ok, 50))]);
      }
      await this.closeAdapter();
      await this.hub.closeStores();
    })();
    return this.closing;
  }
}
