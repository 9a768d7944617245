/**
 * `shardhub node`: joins this machine to a hub as a native worker.
 *
 * Its options are one table (`NODE_OPTIONS`, read by `server/options.ts`): flags, then environment
 * variables, then a JSON config file, then defaults. The join token is read from
 * `SHARDHUB_JOIN_TOKEN`, the variable `shardhub serve` takes it from. Usage errors exit 2, a node
 * that cannot go on (e.g. a refused join token) exits 1, a drained node exits 0, and so does a
 * node stopped by SIGINT/SIGTERM before it started (`common/early-signals.ts`).
 */
import { isIP } from 'node:net';
import { Command } from 'commander';
import {
  addOptions,
  EXIT,
  EXIT_CODES_HELP,
  readValues,
  runProgram,
  reportError,
  UsageError,
  type CliIo,
  type OptionTable,
} from '../common/options.ts';
import { heldSignals, releaseSignals } from '../common/early-signals.mjs';
import { relaunchWithFlags, startedAs, watchParent } from '../common/relaunch.ts';
import { NODE_RELAUNCH } from './launch.ts';
import { NodeFatalError } from './errors.ts';
import { runNode, type NodeBackendChoice, type NodeOptions } from './node.ts';

/** The backends `--backend` takes; `auto` picks the best one that works here. */
export const BACKEND_CHOICES: readonly NodeBackendChoice[] = ['auto', 'cpu', 'cuda', 'sim', 'webgpu'];

const SIM = 'Simulation (--backend sim: no compute, for measuring the scheduler):';
const FAULTS = 'Fault injection (any backend; for testing the hub, never in production):';

/** Every option of `shardhub node`. */
export const NODE_OPTIONS: OptionTable = {
  hub: {
    type: 'urls',
    help: "the hub's address, e.g. http://hub.example:8080; several separated by commas: after a lost connection the node tries the next",
    env: 'SHARDHUB_HUB',
    required: true,
  },
  token: { type: 'string', help: "the hub's join token", env: 'SHARDHUB_JOIN_TOKEN', arg: 'TOKEN' },
  concurrency: {
    type: 'int',
    help: 'sessions running at once',
    env: 'SHARDHUB_CONCURRENCY',
    default: 1,
    min: 1,
    max: 256,
  },
  backend: {
    type: 'choice',
    choices: BACKEND_CHOICES,
    help: 'what runs the models (auto: cuda where installed, else a real GPU through webgpu, else cpu; see docs/gpu.md)',
    env: 'SHARDHUB_BACKEND',
    default: 'auto',
  },
  pool: { type: 'string', help: 'the worker pool this node joins', env: 'SHARDHUB_POOL', arg: 'NAME' },
  name: { type: 'string', help: 'the name shown on the dashboard (default: hostname)', arg: 'NAME' },
  id: {
    type: 'string',
    help: 'a fixed worker id (8-64 of A-Z a-z 0-9 _ -); default: one kept in --state',
    arg: 'ID',
  },
  state: { type: 'string', help: "where the node's identity is kept (default ~/.shardhub)", arg: 'DIR' },
  cache: { type: 'string', help: 'where models are cached (default ~/.cache/shardhub/models)', arg: 'DIR' },
  'data-channel': {
    type: 'choice',
    choices: ['on', 'off'],
    help: "large items' inputs over a connection of their own (http: hubs only)",
    env: 'SHARDHUB_DATA_CHANNEL',
  },
  'local-address': {
    type: 'string',
    help: "the local IP address to connect from (several nodes on one machine behind a balancer that hashes the client's address: one address each)",
    env: 'SHARDHUB_LOCAL_ADDRESS',
    arg: 'IP',
  },
  'item-ms': {
    type: 'number',
    help: 'ms one item costs at speed 1 (default 50); an item of R rows costs R times that',
    min: 0,
    group: SIM,
  },
  speed: { type: 'number', help: 'relative speed: an item takes C/S ms (default 1)', group: SIM },
  'slow-at-s': { type: 'number', help: 'T s after the first item, become slower', min: 0, group: SIM },
  'slow-factor': { type: 'number', help: 'how many times slower after --slow-at-s (default 4)', group: SIM },
  'die-at-s': {
    type: 'number',
    help: 'T s after the first item, exit hard (status 137) like a crashed machine',
    min: 0,
    group: SIM,
  },
  'corrupt-rate': {
    type: 'number',
    help: "corrupt each item's outputs with this probability, like a faulty GPU or a liar",
    min: 0,
    max: 1,
    group: FAULTS,
  },
  'corrupt-after': {
    type: 'int',
    help: 'with --corrupt-rate: answer the first N items honestly, then lie (a liar that passes probation)',
    min: 0,
    group: FAULTS,
    arg: 'N',
  },
  'corrupt-scale': {
    type: 'number',
    help: "with --corrupt-rate: multiply one output element by F (e.g. 1.05) instead of every element's +1",
    group: FAULTS,
    arg: 'F',
  },
};

const SIM_KEYS = ['speed', 'item-ms', 'slow-at-s', 'slow-factor', 'die-at-s'] as const;

const HELP_AFTER = `
Ctrl-C (or SIGTERM) drains: unstarted items go back to the hub, running ones finish, then the node
exits. Ctrl-C again (a second later) quits at once.
CUDA: on a GPU server, add the CUDA provider once with \`npm run install-cuda\`; the node logs which
backend it runs and why (e.g. "CUDA provider not installed; using cpu").

Examples:
  shardhub node --hub http://hub.local:8080 --token join_abc123
  SHARDHUB_JOIN_TOKEN=join_abc123 shardhub node --hub http://hub.local:8080 --concurrency 2 --backend cpu
  shardhub node --hub http://127.0.0.1:8080 --token T --backend sim --speed 2 --item-ms 20 --id sim-fast-1
  shardhub node --config /etc/shardhub/node.json
`;

/** `shardhub node`'s options and help. */
function define(cmd: Command): Command {
  return addOptions(cmd.usage('--hub URL [options]'), NODE_OPTIONS).addHelpText('after', HELP_AFTER);
}

/** The node's options from a parsed command; throws a {@link UsageError}. */
export function nodeOptions(cmd: Command, env: NodeJS.ProcessEnv): NodeOptions {
  const v = readValues(cmd, NODE_OPTIONS, env);
  const backend = v.backend as NodeBackendChoice;
  const simSet = SIM_KEYS.filter((k) => v[k] !== undefined);
  if (backend !== 'sim' && simSet.length > 0) {
    throw new UsageError(
      `${simSet.map((k) => `--${k}`).join(', ')} ${simSet.length === 1 ? 'applies' : 'apply'} only with --backend sim`,
    );
  }
  for (const k of ['speed', 'slow-factor'] as const) {
    if (v[k] !== undefined && (v[k] as number) <= 0) throw new UsageError(`--${k} must be a number > 0`);
  }
  const hubs = (v.hub as string).split(',');
  const options: NodeOptions = {
    hub: hubs.length === 1 ? (hubs[0] as string) : hubs,
    concurrency: v.concurrency as number,
    backend,
  };
  if (v.token !== undefined) options.token = v.token as string;
  for (const key of ['pool', 'name'] as const) {
    const s = v[key] as string | undefined;
    if (s === undefined) continue;
    if (s.length > 128) throw new UsageError(`--${key} must be 1-128 characters`);
    options[key] = s;
  }
  if (v.id !== undefined) {
    if (!/^[A-Za-z0-9_-]{8,64}$/.test(v.id as string))
      throw new UsageError('--id must be 8-64 characters of [A-Za-z0-9_-]');
    options.id = v.id as string;
  }
  if (v['corrupt-rate'] !== undefined) {
    options.corrupt = { rate: v['corrupt-rate'] as number };
    if (v['corrupt-after'] !== undefined) options.corrupt.after = v['corrupt-after'] as number;
    if (v['corrupt-scale'] !== undefined) {
      const scale = v['corrupt-scale'] as number;
      if (!Number.isFinite(scale) || scale === 1)
        throw new UsageError('--corrupt-scale must be a number other than 1');
      options.corrupt.scale = scale;
    }
  } else if (v['corrupt-after'] !== undefined || v['corrupt-scale'] !== undefined) {
    throw new UsageError('--corrupt-after and --corrupt-scale apply only with --corrupt-rate');
  }
  if (v['local-address'] !== undefined) {
    if (isIP(v['local-address'] as string) === 0)
      throw new UsageError('--local-address must be an IP address of this machine');
    options.localAddress = v['local-address'] as string;
  }
  if (v['data-channel'] !== undefined) options.dataChannel = v['data-channel'] === 'on';
  if (v.state !== undefined) options.stateDir = v.state as string;
  if (v.cache !== undefined) options.cacheDir = v.cache as string;
  if (backend === 'sim') {
    options.sim = {
      speed: v.speed as number | undefined,
      itemMs: v['item-ms'] as number | undefined,
      slowAtS: v['slow-at-s'] as number | undefined,
      slowFactor: v['slow-factor'] as number | undefined,
      dieAtS: v['die-at-s'] as number | undefined,
    };
  }
  return options;
}

/** Runs `shardhub node` with parsed options until it stops; resolves with the exit code. */
async function run(cmd: Command, io: CliIo): Promise<number> {
  try {
    const options = nodeOptions(cmd, io.env);
    // Stopped while it was loading (signals held since the process began): nothing to drain.
    const early = heldSignals()[0];
    if (early) {
      io.stderr.write(`shardhub node: stopped by ${early} before it started\n`);
      return EXIT.ok;
    }
    // Without the node's V8 flags and malloc settings, run again as a child that has them; the
    // parent passes signals on from the moment the child is spawned.
    if (!startedAs(NODE_RELAUNCH)) {
      const child = relaunchWithFlags(NODE_RELAUNCH);
      releaseSignals();
      return await child;
    }
    // runNode takes the held signals over when it installs its own handlers.
    const node = await runNode({ ...options, handleSignals: true });
    // Started by a parent that has since died without a word (SIGKILL): drain, as on SIGTERM.
    watchParent(() => process.kill(process.pid, 'SIGTERM'));
    await node.done;
    return EXIT.ok;
  } catch (err) {
    if (err instanceof NodeFatalError) {
      io.stderr.write(`shardhub node: ${err.message}\n`);
      return err.exitCode;
    }
    throw err;
  } finally {
    releaseSignals();
  }
}

/** The `node` command for `server/cli.ts`. */
export const NODE = { define, run };

/** The result of parsing `shardhub node` arguments. */
export type ParsedNodeArgs = { help: true } | { help: false; options: NodeOptions };

/** A `shardhub` program with only the `node` command (`native/main.ts`, tests). */
function program(io: CliIo, result: { code?: number }, parsed?: (cmd: Command) => void): Command {
  const root = new Command('shardhub').helpCommand(false);
  const cmd = define(root.command('node').helpOption('-h, --help', 'show help'));
  cmd.addHelpText('after', `\n${EXIT_CODES_HELP}\n`);
  cmd.action(async () => {
    try {
      if (parsed) parsed(cmd);
      else result.code = await run(cmd, io);
    } catch (err) {
      result.code = reportError(err, 'shardhub node', io);
    }
  });
  return root;
}

/**
 * Parses and validates `shardhub node` arguments (flags > env > config file > defaults).
 * Throws a {@link UsageError} with a precise message.
 */
export function parseNodeArgs(argv: string[], env: NodeJS.ProcessEnv = process.env): ParsedNodeArgs {
  let options: NodeOptions | undefined;
  let error: unknown;
  const io: CliIo = { stdout: { write: () => true }, stderr: { write: () => true }, env };
  const root = program(io, {}, (cmd) => {
    try {
      options = nodeOptions(cmd, env);
    } catch (err) {
      error = err;
    }
  });
  root.exitOverride();
  for (const c of root.commands) {
    c.exitOverride();
    c.configureOutput({ writeOut: () => undefined, writeErr: () => undefined });
  }
  try {
    root.parse(['node', ...argv], { from: 'user' });
  } catch (err) {
    const e = err as { code?: string; message: string };
    if (e.code === 'commander.helpDisplayed') return { help: true };
    throw new UsageError(e.message.replace(/^error: /, ''));
  }
  if (error) throw error;
  if (!options) throw new UsageError('bad arguments');
  return { help: false, options };
}

/**
 * Runs `shardhub node` until the node stops; returns the process exit code (0 drained, 1 fatal,
 * 2 usage). Installs SIGINT/SIGTERM handlers that drain the node.
 */
export async function nodeCommand(argv: string[], cio: Partial<CliIo> = {}): Promise<number> {
  const io: CliIo = { stdout: process.stdout, stderr: process.stderr, env: process.env, ...cio };
  const result: { code?: number } = {};
  return runProgram(program(io, result), ['node', ...argv], io, () => result.code);
}
