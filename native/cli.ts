/**
 * `shardhub node`: joins this machine to a hub as a native worker.
 *
 * Settings come from flags, then environment variables, then a JSON config file, then defaults (the
 * first that sets a value wins). Usage errors exit 2, a node that cannot go on (e.g. a refused join
 * token) exits 1, a drained node exits 0.
 */
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { relaunchWithFlags, startedAs, watchParent } from './launch.ts';
import { NodeFatalError, runNode, type NodeBackendChoice, type NodeOptions } from './node.ts';

/** Usage text of `shardhub node`. */
export const NODE_USAGE = `Usage: shardhub node --hub URL [options]

Joins this machine to a shardhub hub as a native worker: it benchmarks each job's model, runs the
items the hub assigns with onnxruntime-node (CUDA where installed, else a GPU through WebGPU, else
CPU) and sends results back.
Ctrl-C (or SIGTERM) drains: unstarted items go back to the hub, running ones finish. Ctrl-C twice quits.
CUDA: on a GPU server, add the CUDA provider once with
  ONNXRUNTIME_NODE_INSTALL=cuda12 npm rebuild onnxruntime-node
and the node logs which backend it runs and why (e.g. "CUDA provider not installed; using cpu").

Options:
  --hub URL            the hub's address, e.g. http://hub.example:8080          [env SHARDHUB_HUB]
  --token T            the hub's join token                                     [env SHARDHUB_TOKEN]
  --concurrency N      sessions running at once (default 1)                     [env SHARDHUB_CONCURRENCY]
  --backend B          auto | cpu | cuda | webgpu | sim (default auto: cuda, else a
                       real GPU through webgpu, else cpu; see docs/gpu.md) [env SHARDHUB_BACKEND]
  --pool NAME          the worker pool this node joins                          [env SHARDHUB_POOL]
  --name NAME          the name shown on the dashboard (default: hostname)
  --id ID              a fixed worker id (8-64 of A-Z a-z 0-9 _ -), for several nodes on one machine
  --state DIR          where the node's identity is kept (default ~/.shardhub)
  --cache DIR          where models are cached (default ~/.cache/shardhub/models)
  --data-channel on|off  large items' inputs over a connection of their own, read straight into
                       batch buffers (default on; http: hubs only)         [env SHARDHUB_DATA_CHANNEL]
  --config FILE        JSON file with any of these keys, e.g. {"hub": "...", "concurrency": 2}
  --help               show this text

Simulation (--backend sim: no compute, for measuring the scheduler):
  --item-ms C          ms one item costs at speed 1 (default 50); an item of R rows
                       (dim 0 of its first input) costs R times that
  --speed S            relative speed: an item takes C/S ms (default 1)
  --slow-at-s T        T s after the first item, become --slow-factor times slower
  --slow-factor F      how many times slower after --slow-at-s (default 4)
  --die-at-s T         T s after the first item, exit hard (status 137) like a crashed machine

Fault injection (any backend; for testing the hub's result checks, never in production):
  --corrupt-rate P     corrupt each item's outputs with probability P (0..1), like a faulty GPU or a liar

Examples:
  shardhub node --hub http://hub.local:8080 --token join_abc123
  SHARDHUB_TOKEN=join_abc123 shardhub node --hub http://hub.local:8080 --concurrency 2 --backend cpu
  shardhub node --hub http://127.0.0.1:8080 --token T --backend sim --speed 2 --item-ms 20 --id sim-fast-1
  shardhub node --config /etc/shardhub/node.json
`;

const FLAGS = {
  hub: { type: 'string' },
  token: { type: 'string' },
  concurrency: { type: 'string' },
  backend: { type: 'string' },
  speed: { type: 'string' },
  'item-ms': { type: 'string' },
  'slow-at-s': { type: 'string' },
  'slow-factor': { type: 'string' },
  'die-at-s': { type: 'string' },
  'corrupt-rate': { type: 'string' },
  pool: { type: 'string' },
  name: { type: 'string' },
  id: { type: 'string' },
  state: { type: 'string' },
  cache: { type: 'string' },
  'data-channel': { type: 'string' },
  config: { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} as const;

type Key = Exclude<keyof typeof FLAGS, 'help' | 'config'>;
const KEYS = Object.keys(FLAGS).filter((k) => k !== 'help' && k !== 'config') as Key[];
const ENV: Partial<Record<Key, string>> = {
  hub: 'SHARDHUB_HUB',
  token: 'SHARDHUB_TOKEN',
  concurrency: 'SHARDHUB_CONCURRENCY',
  backend: 'SHARDHUB_BACKEND',
  pool: 'SHARDHUB_POOL',
  'data-channel': 'SHARDHUB_DATA_CHANNEL',
};
const BACKEND_CHOICES: readonly NodeBackendChoice[] = ['auto', 'cpu', 'cuda', 'sim', 'webgpu'];
const SIM_KEYS: readonly Key[] = ['speed', 'item-ms', 'slow-at-s', 'slow-factor', 'die-at-s'];

/** A usage problem: the message says what to fix. */
export class UsageError extends Error {
  override name = 'UsageError';
}

/** The result of parsing `shardhub node` arguments. */
export type ParsedNodeArgs = { help: true } | { help: false; options: NodeOptions };

/**
 * Parses and validates `shardhub node` arguments (flags > env > config file > defaults).
 * Throws a {@link UsageError} with a precise message.
 */
export function parseNodeArgs(argv: string[], env: NodeJS.ProcessEnv = process.env): ParsedNodeArgs {
  let parsed;
  try {
    parsed = parseArgs({ args: argv, options: FLAGS, strict: true, allowPositionals: false });
  } catch (err) {
    throw new UsageError((err as Error).message.split('\n')[0] ?? 'bad arguments');
  }
  const flags = parsed.values;
  if (flags.help) return { help: true };

  const config = flags.config !== undefined ? readConfig(flags.config) : {};
  const raw: Partial<Record<Key, string>> = {};
  const source: Partial<Record<Key, string>> = {};
  for (const key of KEYS) {
    const envName = ENV[key];
    const fromFlag = flags[key];
    const fromEnv = envName ? env[envName] : undefined;
    if (fromFlag !== undefined) {
      raw[key] = fromFlag;
      source[key] = `--${key}`;
    } else if (fromEnv !== undefined && fromEnv !== '') {
      raw[key] = fromEnv;
      source[key] = envName;
    } else if (config[key] !== undefined) {
      raw[key] = config[key];
      source[key] = `"${key}" in ${flags.config}`;
    }
  }
  const name = (key: Key) => source[key] ?? `--${key}`;

  const hub = raw.hub;
  if (hub === undefined) throw new UsageError('--hub is required (or set SHARDHUB_HUB)');
  let url: URL;
  try {
    url = new URL(hub);
  } catch {
    throw new UsageError(`${name('hub')} must be a URL like http://hub.example:8080`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:')
    throw new UsageError(`${name('hub')} must be an http(s) URL`);

  const backend = (raw.backend ?? 'auto') as NodeBackendChoice;
  if (!BACKEND_CHOICES.includes(backend))
    throw new UsageError(`${name('backend')} must be one of ${BACKEND_CHOICES.join(', ')}`);
  const simSet = SIM_KEYS.filter((k) => raw[k] !== undefined);
  if (backend !== 'sim' && simSet.length > 0) {
    throw new UsageError(
      `${simSet.map((k) => `--${k}`).join(', ')} ${simSet.length === 1 ? 'applies' : 'apply'} only with --backend sim`,
    );
  }

  const concurrency = int(raw.concurrency ?? '1', name('concurrency'));
  if (concurrency < 1 || concurrency > 256)
    throw new UsageError(`${name('concurrency')} must be an integer >= 1 (at most 256)`);

  const options: NodeOptions = { hub: url.origin + url.pathname.replace(/\/+$/, ''), concurrency, backend };
  if (raw.token !== undefined) options.token = raw.token;
  for (const key of ['pool', 'name'] as const) {
    const v = raw[key];
    if (v === undefined) continue;
    if (v.length === 0 || v.length > 128) throw new UsageError(`${name(key)} must be 1-128 characters`);
    options[key] = v;
  }
  if (raw.id !== undefined) {
    if (!/^[A-Za-z0-9_-]{8,64}$/.test(raw.id))
      throw new UsageError(`${name('id')} must be 8-64 characters of [A-Za-z0-9_-]`);
    options.id = raw.id;
  }
  if (raw['corrupt-rate'] !== undefined) {
    options.corruptRate = num(
      raw['corrupt-rate'],
      name('corrupt-rate'),
      (v) => v >= 0 && v <= 1,
      'a number from 0 to 1',
    );
  }
  if (raw['data-channel'] !== undefined) {
    const v = raw['data-channel'];
    if (v !== 'on' && v !== 'off') throw new UsageError(`${name('data-channel')} must be on or off`);
    options.dataChannel = v === 'on';
  }
  if (raw.state !== undefined) options.stateDir = raw.state;
  if (raw.cache !== undefined) options.cacheDir = raw.cache;
  if (backend === 'sim') {
    options.sim = {
      speed: num(raw.speed, name('speed'), (v) => v > 0, 'a number > 0'),
      itemMs: num(raw['item-ms'], name('item-ms'), (v) => v >= 0, 'a number >= 0'),
      slowAtS: num(raw['slow-at-s'], name('slow-at-s'), (v) => v >= 0, 'a number >= 0'),
      slowFactor: num(raw['slow-factor'], name('slow-factor'), (v) => v > 0, 'a number > 0'),
      dieAtS: num(raw['die-at-s'], name('die-at-s'), (v) => v >= 0, 'a number >= 0'),
    };
  }
  return { help: false, options };
}

/** Reads a config file: a JSON object whose keys are the flags' names (kebab or camel case). */
function readConfig(file: string): Partial<Record<Key, string>> {
  let data: unknown;
  try {
    data = JSON.parse(readFileSync(file, 'utf8'));
  } catch (err) {
    throw new UsageError(`--config ${file}: ${(err as Error).message}`);
  }
  if (typeof data !== 'object' || data === null || Array.isArray(data)) {
    throw new UsageError(`--config ${file}: must be a JSON object`);
  }
  const out: Partial<Record<Key, string>> = {};
  for (const [k, v] of Object.entries(data)) {
    const key = k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`) as Key;
    if (!KEYS.includes(key))
      throw new UsageError(`--config ${file}: unknown key "${k}" (known: ${KEYS.join(', ')})`);
    if (typeof v !== 'string' && typeof v !== 'number') {
      throw new UsageError(`--config ${file}: "${k}" must be a string or a number`);
    }
    out[key] = String(v);
  }
  return out;
}

function int(s: string, what: string): number {
  const v = /^\s*[+-]?\d+\s*$/.test(s) ? Number(s) : NaN;
  if (!Number.isSafeInteger(v)) throw new UsageError(`${what} must be an integer >= 1`);
  return v;
}

function num(
  s: string | undefined,
  what: string,
  ok: (v: number) => boolean,
  want: string,
): number | undefined {
  if (s === undefined) return undefined;
  const v = s.trim() === '' ? NaN : Number(s);
  if (!Number.isFinite(v) || !ok(v)) throw new UsageError(`${what} must be ${want}`);
  return v;
}

/** Output streams of the command (tests capture them). */
export interface CommandIo {
  stdout: { write(s: string): unknown };
  stderr: { write(s: string): unknown };
  env: NodeJS.ProcessEnv;
}

/**
 * Runs `shardhub node` until the node stops; returns the process exit code (0 drained, 1 fatal,
 * 2 usage). Installs SIGINT/SIGTERM handlers that drain the node.
 */
export async function nodeCommand(
  argv: string[],
  cio: Partial<CommandIo> = {},
  /** The command is this process's entry: without the node's V8 flags it runs itself again with them. */
  entry: { relaunch?: boolean } = {},
): Promise<number> {
  const stdout = cio.stdout ?? process.stdout;
  const stderr = cio.stderr ?? process.stderr;
  let parsed: ParsedNodeArgs;
  try {
    parsed = parseNodeArgs(argv, cio.env ?? process.env);
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    stderr.write(`shardhub node: ${err.message}\nRun \`shardhub node --help\` for usage.\n`);
    return 2;
  }
  if (parsed.help) {
    stdout.write(NODE_USAGE);
    return 0;
  }
  if (entry.relaunch && !startedAs()) return relaunchWithFlags();
  try {
    const node = await runNode({ ...parsed.options, handleSignals: true });
    // Started by a parent that has since died without a word (SIGKILL): drain, as on SIGTERM.
    watchParent(() => process.kill(process.pid, 'SIGTERM'));
    await node.done;
    return 0;
  } catch (err) {
    const message = err instanceof Error ? err.message : String(err);
    stderr.write(`shardhub node: ${message}\n`);
    return err instanceof NodeFatalError ? err.exitCode : 1;
  }
}
