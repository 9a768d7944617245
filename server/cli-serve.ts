/**
 * `shardhub serve`: starts a hub. By default (the `npm start` experience) it also starts one local
 * native node and queues a demo job on a bundled real model, so work flows at once.
 */
import type { Command } from 'commander';
import { spawn, type ChildProcess } from 'node:child_process';
import { networkInterfaces } from 'node:os';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { packTensors } from '../protocol/pack.ts';
import { calibrationInputs } from '../worker/calibration.ts';
import { HubServer, defaultHubConfig } from './app.ts';
import { DEFAULT_HUB_OPTIONS } from './hub.ts';
import { DEFAULT_SCHEDULER_OPTIONS } from './scheduler/scheduler.ts';
import { relaunchWithFlags, startedAs, watchParent } from '../common/relaunch.ts';
import { createLogger } from './logger.ts';
import { queueOcrDemo } from './pipeline-demo.ts';
import { HUB_RELAUNCH } from './node-flags.ts';
import { DEFAULT_TRUST_OPTIONS } from './trust.ts';
import {
  addOptions,
  CliError,
  EXIT,
  invokedAs,
  readValues,
  version,
  type CliIo,
  type OptionTable,
  type OptionValues,
} from './options.ts';

const ROOT = resolve(fileURLToPath(import.meta.url), '../..');

/** The hub's own defaults (`HubServer.start` uses them too), shown in `--help`. */
const HUB = defaultHubConfig();

/**
 * `shardhub serve`'s options: flags, variables, help, and the types of their values. The defaults
 * of what the hub itself decides are the hub's (`defaultHubConfig`, `DEFAULT_HUB_OPTIONS`, the
 * scheduler's and trust's defaults), referred to here, not restated.
 */
export const SERVE_OPTIONS = {
  port: {
    type: 'int',
    help: 'port to listen on (0: any free port)',
    env: 'SHARDHUB_PORT',
    default: HUB.port,
    min: 0,
    max: 65535,
  },
  host: { type: 'string', help: 'address to bind', env: 'SHARDHUB_HOST', default: HUB.host },
  data: {
    type: 'string',
    help: 'data dir: SQLite store, tokens, uploaded models',
    env: 'SHARDHUB_DATA',
    default: HUB.dataDir,
    arg: 'DIR',
  },
  store: {
    type: 'string',
    help: 'store: a postgres:// URL that several hubs share, or a SQLite file (default: DIR/hub.sqlite)',
    env: 'SHARDHUB_STORE',
    arg: 'URL|FILE',
  },
  models: { type: 'dir', help: 'folder of model manifests', env: 'SHARDHUB_MODELS', arg: 'DIR' },
  'operator-token': {
    type: 'string',
    help: 'operator token (else generated once and kept in the data dir)',
    env: 'SHARDHUB_OPERATOR_TOKEN',
    arg: 'TOKEN',
  },
  'join-token': {
    type: 'string',
    help: 'join token for native nodes (else generated and kept)',
    env: 'SHARDHUB_JOIN_TOKEN',
    arg: 'TOKEN',
  },
  'contributor-token': {
    type: 'string',
    help: 'require this token from browser contributors (default: anonymous)',
    env: 'SHARDHUB_CONTRIBUTOR_TOKEN',
    arg: 'TOKEN',
  },
  cors: {
    type: 'string',
    help: 'comma-separated origins allowed to call the API',
    env: 'SHARDHUB_CORS',
    arg: 'ORIGINS',
  },
  'heartbeat-ms': {
    type: 'int',
    help: 'how often workers send heartbeats',
    env: 'SHARDHUB_HEARTBEAT_MS',
    default: DEFAULT_HUB_OPTIONS.heartbeatMs,
    min: 100,
  },
  'offline-after-ms': {
    type: 'int',
    help: 'silence after which a worker is offline and loses its items',
    env: 'SHARDHUB_OFFLINE_AFTER_MS',
    default: DEFAULT_HUB_OPTIONS.offlineAfterMs,
    min: 200,
  },
  'max-attempts': {
    type: 'int',
    help: 'attempts per item before it ends as failed',
    env: 'SHARDHUB_MAX_ATTEMPTS',
    default: DEFAULT_HUB_OPTIONS.maxAttempts,
    min: 1,
  },
  'lease-ms': {
    type: 'int',
    help: 'several hubs: a hub that has not renewed its lease on the store for this long is fenced and reaped (ms)',
    env: 'SHARDHUB_LEASE_MS',
    default: DEFAULT_HUB_OPTIONS.leaseMs,
    min: 300,
    max: 600_000,
  },
  'result-cache-entries': {
    type: 'int',
    help: 'results the result cache answers from (least recently used go first; 0: no cache)',
    env: 'SHARDHUB_RESULT_CACHE_ENTRIES',
    default: DEFAULT_HUB_OPTIONS.resultCacheEntries,
    min: 0,
  },
  weighting: {
    type: 'boolean',
    help: 'weight shares by measured speed',
    default: DEFAULT_SCHEDULER_OPTIONS.weighting,
    negatable: true,
  },
  factoring: {
    type: 'boolean',
    help: 'dynamic shards that shrink near the end (off: one static split)',
    default: DEFAULT_SCHEDULER_OPTIONS.factoring,
    negatable: true,
  },
  stealing: {
    type: 'boolean',
    help: 'idle workers take unstarted items from slow ones',
    default: DEFAULT_SCHEDULER_OPTIONS.stealing,
    negatable: true,
  },
  speculation: {
    type: 'boolean',
    help: 'run straggling items a second time near the end',
    default: DEFAULT_SCHEDULER_OPTIONS.speculation,
    negatable: true,
  },
  'trust-native': {
    type: 'boolean',
    help: 'native nodes (they hold the join token) start trusted: no probation replicas, canaries only',
    env: 'SHARDHUB_TRUST_NATIVE',
    default: DEFAULT_TRUST_OPTIONS.trustNative,
  },
  demo: {
    type: 'boolean',
    help: 'queue a demo job on a bundled real model at start',
    env: 'SHARDHUB_DEMO',
    default: true,
    negatable: true,
  },
  'local-node': {
    type: 'boolean',
    help: 'also run one native node on this machine',
    env: 'SHARDHUB_LOCAL_NODE',
    default: true,
    negatable: true,
  },
} satisfies OptionTable;

/** `shardhub serve`'s option values, typed by {@link SERVE_OPTIONS}. */
export type ServeValues = OptionValues<typeof SERVE_OPTIONS>;

/** Addresses of this machine on its networks (IPv4, not loopback), for the banner. */
export function lanAddresses(): string[] {
  return Object.values(networkInterfaces())
    .flat()
    .filter((a): a is NonNullable<typeof a> => !!a && a.family === 'IPv4' && !a.internal)
    .map((a) => a.address);
}

/** The error a hub that cannot start gives, in one line that says what to do. */
function startError(err: unknown, port: number, host: string, dataDir: string): CliError {
  const e = err as NodeJS.ErrnoException;
  switch (e.code) {
    case 'EADDRINUSE':
      return new CliError(
        `port ${port} is in use (another hub?); stop what uses it, or choose another port with --port ${port === 8080 ? 8081 : port + 1}`,
        EXIT.listen,
      );
    case 'EACCES':
      if (e.syscall === 'listen')
        return new CliError(
          `not allowed to listen on port ${port}; ports below 1024 need root, choose another with --port`,
          EXIT.listen,
        );
      return new CliError(
        `cannot write to the data folder ${dataDir} (${e.message}); choose another with --data`,
      );
    case 'EADDRNOTAVAIL':
    case 'ENOTFOUND':
      return new CliError(
        `cannot listen on ${host}: not an address of this machine; see --host`,
        EXIT.listen,
      );
    case 'ENOTDIR':
    case 'EEXIST':
      return new CliError(
        `the data folder ${dataDir} is not a folder; choose another with --data`,
        EXIT.usage,
      );
    default:
      if (e.message?.startsWith('cannot open the PostgreSQL store'))
        return new CliError(`${e.message}; check --store (or SHARDHUB_STORE)`, EXIT.unreachable);
      return new CliError(`the hub could not start: ${e.message ?? String(err)}`);
  }
}

/** `shardhub serve`'s options and help. */
function define(cmd: Command): Command {
  return addOptions(cmd, SERVE_OPTIONS).addHelpText(
    'after',
    `
Examples:
  shardhub serve                       # hub + local node + demo job on :8080
  shardhub serve --no-demo --no-local-node --port 9000 --data /var/lib/shardhub
`,
  );
}

/** Runs the hub until SIGINT/SIGTERM; resolves with the exit code. */
async function run(cmd: Command, io: CliIo): Promise<number> {
  const v = readValues(cmd, SERVE_OPTIONS, io.env);
  return serveCommand(v, io);
}

/** The `serve` command for `server/cli.ts`. */
export const SERVE = { define, run };

/**
 * Runs the hub with parsed options until SIGINT/SIGTERM. Started without the hub's Node flags (the
 * `shardhub` command, `npm run shardhub -- serve`), it runs itself again as a child that has them.
 */
export async function serveCommand(v: ServeValues, io: CliIo, relaunch = true): Promise<number> {
  if (relaunch && !startedAs(HUB_RELAUNCH)) return relaunchWithFlags(HUB_RELAUNCH);
  const log = createLogger('hub');
  const { port, host, data: dataDir } = v;
  let server: HubServer;
  try {
    server = await HubServer.start(
      {
        port,
        host,
        dataDir,
        store: v.store,
        modelsDir: v.models ?? HUB.modelsDir,
        operatorToken: v['operator-token'],
        joinToken: v['join-token'],
        contributorToken: v['contributor-token'],
        corsOrigins: (v.cors ?? '')
          .split(',')
          .map((s) => s.trim())
          .filter(Boolean),
        hub: {
          heartbeatMs: v['heartbeat-ms'],
          offlineAfterMs: v['offline-after-ms'],
          maxAttempts: v['max-attempts'],
          leaseMs: v['lease-ms'],
          resultCacheEntries: v['result-cache-entries'],
          trust: { ...DEFAULT_TRUST_OPTIONS, trustNative: v['trust-native'] },
          scheduler: {
            weighting: v.weighting,
            factoring: v.factoring,
            stealing: v.stealing,
            speculation: v.speculation,
          },
        },
      },
      log,
    );
  } catch (err) {
    throw startError(err, port, host, dataDir);
  }
  const { operatorToken, joinToken } = server.tokens;
  const me = invokedAs(io.env);
  const wildcard = host === '0.0.0.0' || host === '::';
  const lan = wildcard ? lanAddresses().map((a) => `http://${a}:${server.port}`) : [];
  // Other machines reach the hub by its network address; this machine by localhost.
  const remote = lan[0] ?? server.url;
  const pad = (s: string) => s.padEnd(19);
  io.stdout.write(
    [
      '',
      `shardhub ${version()} hub is up`,
      `  ${pad('contribute a GPU:')}${server.url}/${lan.map((u) => `  or ${u}/`).join('')}`,
      `  ${pad('dashboard:')}${server.url}/dashboard`,
      `  ${pad('operator token:')}${operatorToken}`,
      `  ${pad('node join token:')}${joinToken}`,
      `  ${pad('add a server:')}${me} node --hub ${remote} --token ${joinToken}`,
      `  ${pad('submit a job:')}${me} submit --hub ${server.url} --token ${operatorToken} --model ppocr-det --inputs DIR --out results`,
      ...(lan.length
        ? [`  ${pad('')}(browsers on other machines need HTTPS for WebGPU: put the hub behind a TLS proxy)`]
        : []),
      '',
    ].join('\n') + '\n',
  );

  let node: ChildProcess | undefined;
  if (v['local-node']) node = startLocalNode(server.url, joinToken, resolve(dataDir, 'local-node'));
  if (v.demo) {
    queueDemo(server, log, io).catch((err: unknown) => log.error({ err }, 'demo job could not start'));
  }

  return new Promise<number>((done) => {
    let stopping = false;
    const stop = (signal: string) => {
      if (stopping) return;
      stopping = true;
      log.info({ signal }, 'shutting down');
      node?.kill('SIGINT');
      const wait =
        node && node.exitCode === null ? new Promise((ok) => node?.once('exit', ok)) : Promise.resolve();
      void Promise.race([wait, new Promise((ok) => setTimeout(ok, 5000))])
        .then(() => server.close())
        .then(() => done(EXIT.ok));
    };
    process.once('SIGINT', () => stop('SIGINT'));
    process.once('SIGTERM', () => stop('SIGTERM'));
    // Started by a parent that has since died without a word (SIGKILL): stop, as on SIGTERM.
    watchParent(() => stop('parent gone'));
  });
}

function startLocalNode(url: string, token: string, stateDir: string): ChildProcess {
  const child = spawn(
    process.execPath,
    [
      '--import',
      'tsx',
      resolve(ROOT, 'native/main.ts'),
      '--hub',
      url,
      '--token',
      token,
      '--state',
      stateDir,
      '--name',
      'local-node',
    ],
    // It shares the hub's terminal: its status line would run into the hub's log lines.
    { stdio: 'inherit', cwd: ROOT, env: { ...process.env, SHARDHUB_STATUS_LINE: 'off' } },
  );
  child.on('exit', (code, signal) => {
    if (code !== 0 && signal !== 'SIGINT')
      process.stderr.write(`local node exited (code ${code}, signal ${signal})\n`);
  });
  return child;
}

/** Queues 24 images' worth of PaddleOCR detection so a newcomer sees the grid work. */
async function queueDemo(server: HubServer, log: ReturnType<typeof createLogger>, io: CliIo): Promise<void> {
  if (await queueOcrDemo(server, log)) return; // OCR on the sample pages (server/pipeline-demo.ts)
  const hub = server.hub;
  const model = hub.models.byName('ppocr-det') ?? hub.models.byName('mlp-small');
  if (!model) {
    log.warn('no demo model available: ppocr-det is missing from the models folder');
    return;
  }
  const job = await hub.createJob({
    model: model.name,
    priority: 0,
    redundancy: 1,
    deadline: null,
    requirements: null,
    options: { demo: true },
    state: 'open',
  });
  const items = Array.from({ length: 24 }, (_, i) => ({
    name: `demo-${String(i).padStart(3, '0')}`,
    inputs: packTensors(calibrationInputs(model, 1000 + i)),
  }));
  await hub.appendItems(job.id, items);
  await hub.sealJob(job.id);
  io.stdout.write(
    `  demo job:          ${job.id} (${items.length} items on ${model.name}); watch ${server.url}/api/jobs/${job.id}\n\n`,
  );
}
