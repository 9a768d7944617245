/**
 * Command-line options of every subcommand, declared once in a table: flag, environment variable,
 * type, default, help. commander parses the command line and writes `--help` from the same table,
 * so the two cannot drift apart; values are typed and checked here, with messages that name where
 * the bad value came from (`--port`, `env SHARDHUB_PORT`, `config "port"`).
 *
 * Precedence: flags, then environment variables, then a JSON file given with `--config FILE`, then
 * defaults. Environment variables are read here rather than by commander's `.env()`, which turns a
 * boolean on whenever its variable is set at all (`SHARDHUB_DEMO=false` would mean on).
 */
import { CommanderError, Option, type Command } from 'commander';
import { readFileSync, statSync } from 'node:fs';
import { basename } from 'node:path';

/**
 * The types an option's value can have. `size` takes units (`8GB`, `512MiB`); `url` an http(s) URL;
 * `urls` one or more, separated by commas (the value is the checked URLs joined by commas).
 */
export type OptionType = 'string' | 'int' | 'number' | 'boolean' | 'size' | 'url' | 'urls' | 'choice' | 'dir';

/** One option of a command. */
export interface OptionSpec {
  type: OptionType;
  help: string;
  env?: string;
  default?: string | number | boolean;
  /** Bounds for numbers and sizes. */
  min?: number;
  max?: number;
  /** The allowed values of a `choice`. */
  choices?: readonly string[];
  required?: boolean;
  /** For booleans that default to true: the flag is `--no-<name>`. */
  negatable?: boolean;
  short?: string;
  /** Placeholder in help, e.g. URL. */
  arg?: string;
  /** Shown in help under "Simulation" or another heading (commander help groups). */
  group?: string;
}

/**
 * A command's options by name. Declare a table `satisfies OptionTable` (not `: OptionTable`) so
 * that its options' types, defaults and choices stay in its type: {@link readValues} then types
 * each value from them, and nothing restates a value's type or default.
 */
export type OptionTable = Record<string, OptionSpec>;

/** The type of a value of this option `type`: a number, a boolean, or text. */
type ValueOfType<T extends OptionType> = T extends 'int' | 'number' | 'size'
  ? number
  : T extends 'boolean'
    ? boolean
    : string;
/** The type of one option's value: a `choice` is one of its choices, when they are `as const`. */
type ValueOf<O extends OptionSpec> = O extends {
  type: 'choice';
  choices: readonly (infer C extends string)[];
}
  ? C
  : ValueOfType<O['type']>;
/**
 * The values {@link readValues} returns for a table: an option with a default, or required, always
 * has one; any other may be undefined. For a table typed only as `OptionTable`, every value is a
 * string, number, boolean or undefined.
 */
export type OptionValues<T extends OptionTable = OptionTable> = {
  -readonly [K in keyof T]: T[K] extends { default: string | number | boolean } | { required: true }
    ? ValueOf<T[K]>
    : ValueOf<T[K]> | undefined;
};

/**
 * The exit codes of every command, documented in `--help`: scripts and supervisors can tell a usage
 * mistake from an unreachable hub from a job that finished with failures.
 */
export const EXIT = {
  ok: 0,
  /** The command failed (the hub refused it, a node could not go on). */
  failed: 1,
  /** A bad option or argument: nothing was done. */
  usage: 2,
  /** The job ended, but not every item completed (failed items, or cancelled). */
  incomplete: 3,
  /** The hub could not be reached (after retries, where the command retries). */
  unreachable: 4,
  /** `serve` could not listen: the port is in use or not allowed. */
  listen: 5,
  /** Stopped by Ctrl-C before it was done (`submit`: its job was cancelled). */
  interrupted: 130,
} as const;

/** The exit codes as `--help` shows them. */
export const EXIT_CODES_HELP = `Exit codes:
  0    done
  1    failed (the hub refused the request, a node could not go on)
  2    usage error: a bad option, URL, port or folder; nothing was done
  3    the job ended with failed items, or was cancelled
  4    the hub could not be reached
  5    serve could not listen (port in use or not allowed)
  130  interrupted by Ctrl-C (submit cancels its job first)`;

/** A problem with the user's options; the CLI prints its message and exits 2. */
export class UsageError extends Error {
  override name = 'UsageError';
  readonly exitCode = EXIT.usage;
}

/** A failure the CLI reports in one line with its exit code (never a stack trace). */
export class CliError extends Error {
  override name = 'CliError';
  constructor(
    message: string,
    readonly exitCode: number = EXIT.failed,
  ) {
    super(message);
  }
}

const UNITS: Record<string, number> = {
  '': 1,
  b: 1,
  k: 1e3,
  kb: 1e3,
  m: 1e6,
  mb: 1e6,
  g: 1e9,
  gb: 1e9,
  t: 1e12,
  tb: 1e12,
  kib: 2 ** 10,
  mib: 2 ** 20,
  gib: 2 ** 30,
  tib: 2 ** 40,
};

/**
 * A size in bytes from `8GB`, `8 GiB`, `1.5g`, `512MiB` or a plain number of bytes. Decimal units
 * are powers of 1000 (as GPU vendors and `nvidia-smi` count), binary ones (`GiB`) of 1024.
 * Returns undefined when the text is not a size.
 */
export function parseSize(text: string): number | undefined {
  const m = /^\s*(\d+(?:\.\d+)?|\.\d+)\s*([a-z]*)\s*$/i.exec(text);
  if (!m) return undefined;
  const unit = UNITS[(m[2] ?? '').toLowerCase()];
  if (unit === undefined) return undefined;
  return Math.round(Number(m[1]) * unit);
}

/**
 * A hub URL, checked: `http://` or `https://`, no query; trailing slashes dropped. `localhost:8080`
 * (no scheme) is the usual slip, and the message says what to type instead.
 */
export function parseHubUrl(text: string, from = '--hub'): string {
  const hint = /^[\w.-]+(:\d+)?(\/.*)?$/.test(text) ? `; did you mean http://${text}?` : '';
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new UsageError(`${from} must be a URL like http://hub.example:8080, got "${text}"${hint}`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:')
    throw new UsageError(`${from} must be an http:// or https:// URL, got "${text}"${hint}`);
  return url.origin + url.pathname.replace(/\/+$/, '');
}

/** Help text of one option: what it is, then its default, variable and choices. */
function describe(o: OptionSpec): string {
  const extra = [
    o.required ? 'required' : undefined,
    o.choices ? `one of ${o.choices.join(', ')}` : undefined,
    o.default !== undefined && !o.negatable ? `default ${String(o.default)}` : undefined,
    o.env ? `env ${o.env}` : undefined,
  ].filter(Boolean);
  return `${o.help}${extra.length ? ` (${extra.join('; ')})` : ''}`;
}

/** The placeholder shown after a flag in help. */
function placeholder(o: OptionSpec): string {
  if (o.arg) return o.arg;
  switch (o.type) {
    case 'int':
    case 'number':
      return 'N';
    case 'size':
      return 'SIZE';
    case 'url':
      return 'URL';
    case 'urls':
      return 'URL[,URL...]';
    case 'dir':
      return 'DIR';
    case 'choice':
      return (o.choices ?? []).join('|');
    default:
      return 'VALUE';
  }
}

/** Adds a table's options (and `--config FILE`) to a commander command. */
export function addOptions(cmd: Command, table: OptionTable): Command {
  for (const [name, o] of Object.entries(table)) {
    const short = o.short ? `-${o.short}, ` : '';
    let flags: string;
    if (o.type === 'boolean') flags = `${short}--${o.negatable ? 'no-' : ''}${name}`;
    else flags = `${short}--${name} <${placeholder(o)}>`;
    const opt = new Option(flags, o.negatable ? `${describe(o)}; on by default` : describe(o));
    if (o.group) opt.helpGroup(o.group);
    cmd.addOption(opt);
  }
  cmd.option('--config <FILE>', 'JSON file with any of these options by name');
  return cmd;
}

/** Where a value came from, for messages. */
type Source = { raw: unknown; from: string };

/**
 * The typed values of a command's options, after commander parsed them: flags over env over the
 * `--config` file over defaults. Throws a {@link UsageError} saying precisely what is wrong.
 */
export function readValues<T extends OptionTable>(
  cmd: Command,
  table: T,
  env: NodeJS.ProcessEnv = process.env,
): OptionValues<T> {
  const flags = cmd.opts<Record<string, unknown>>();
  let file: Record<string, unknown> = {};
  const configFile = flags.config;
  if (typeof configFile === 'string') {
    try {
      file = JSON.parse(readFileSync(configFile, 'utf8')) as Record<string, unknown>;
    } catch (err) {
      throw new UsageError(`cannot read config file ${configFile}: ${(err as Error).message}`);
    }
    if (typeof file !== 'object' || file === null || Array.isArray(file))
      throw new UsageError(`config file ${configFile} must hold a JSON object`);
    // Keys may be given as flags (`item-ms`) or in camel case (`itemMs`).
    file = Object.fromEntries(
      Object.entries(file).map(([k, v]) => [k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`), v]),
    );
    for (const key of Object.keys(file)) {
      if (!(key in table))
        throw new UsageError(
          `config file ${configFile}: unknown option "${key}" (known: ${Object.keys(table).join(', ')})`,
        );
    }
  }

  const values: Record<string, string | number | boolean | undefined> = {};
  for (const [name, o] of Object.entries(table)) {
    const key = camel(name);
    let src: Source | undefined;
    const given = cmd.getOptionValueSource(key) === 'cli' ? flags[key] : undefined;
    if (given !== undefined) src = { raw: given, from: `--${name}` };
    else if (o.env && env[o.env] !== undefined && env[o.env] !== '')
      src = { raw: env[o.env], from: `env ${o.env}` };
    else if (file[name] !== undefined) src = { raw: file[name], from: `config "${name}"` };
    else if (o.default !== undefined) src = { raw: o.default, from: `--${name}` };
    if (src === undefined) {
      if (o.required)
        throw new UsageError(`--${name} is required (${o.help}${o.env ? `; or set ${o.env}` : ''})`);
      values[name] = undefined;
      continue;
    }
    values[name] = coerce(name, o, src.raw, src.from);
  }
  // `coerce` gives each option a value of its type, and one with a default or required a value:
  // what `OptionValues<T>` says, which TypeScript cannot follow through the loop.
  return values as OptionValues<T>;
}

/** `min-gpu-memory` → `minGpuMemory`, as commander names option values. */
function camel(name: string): string {
  return name.replace(/-([a-z])/g, (_m, c: string) => c.toUpperCase());
}

function coerce(name: string, o: OptionSpec, raw: unknown, from: string): string | number | boolean {
  const text = typeof raw === 'string' ? raw : String(raw);
  const bounds = (n: number, what: string): number => {
    if (o.min !== undefined && n < o.min)
      throw new UsageError(
        `${from} must be ${what} >= ${o.min}${o.max !== undefined ? ` and <= ${o.max}` : ''}, got ${text}`,
      );
    if (o.max !== undefined && n > o.max)
      throw new UsageError(
        `${from} must be ${what}${o.min !== undefined ? ` from ${o.min}` : ''} to ${o.max}, got ${text}`,
      );
    return n;
  };
  switch (o.type) {
    case 'boolean':
      if (typeof raw === 'boolean') return raw;
      if (/^(true|1|yes|on)$/i.test(text)) return true;
      if (/^(false|0|no|off)$/i.test(text)) return false;
      throw new UsageError(`${from} must be true or false, got "${text}"`);
    case 'string':
      if (text === '') throw new UsageError(`${from} must not be empty`);
      return text;
    case 'choice':
      if (!(o.choices ?? []).includes(text))
        throw new UsageError(`${from} must be one of ${(o.choices ?? []).join(', ')}, got "${text}"`);
      return text;
    case 'url':
      return parseHubUrl(text, from);
    case 'urls': {
      const urls = text.split(',').map((u) => u.trim());
      if (urls.some((u) => u === ''))
        throw new UsageError(`${from} must be URLs separated by commas, got "${text}"`);
      return urls.map((u) => parseHubUrl(u, from)).join(',');
    }
    case 'dir': {
      let isDir = false;
      try {
        isDir = statSync(text).isDirectory();
      } catch {
        throw new UsageError(`${from}: no folder ${text}`);
      }
      if (!isDir) throw new UsageError(`${from}: ${text} is not a folder`);
      return text;
    }
    case 'size': {
      const n = typeof raw === 'number' ? raw : parseSize(text);
      if (n === undefined)
        throw new UsageError(`${from} must be a size like 8GB, 512MiB or 1000000 (bytes), got "${text}"`);
      return bounds(n, 'a size');
    }
    case 'int':
    case 'number': {
      const n = typeof raw === 'number' ? raw : text.trim() === '' ? NaN : Number(text);
      const want = o.type === 'int' ? 'an integer' : 'a number';
      if (!Number.isFinite(n) || (o.type === 'int' && !Number.isInteger(n)))
        throw new UsageError(
          `${from} must be ${want}${o.min !== undefined ? ` >= ${o.min}` : ''}, got "${text}"`,
        );
      void name;
      return bounds(n, want);
    }
  }
}

/**
 * Runs a commander program on `argv` (the user's words after `shardhub`) and returns its exit code:
 * commander's own errors (unknown option, missing value) and {@link UsageError}s are one line and
 * exit 2; {@link CliError}s their own code; `--help` and `--version` 0.
 */
export async function runProgram(
  program: Command,
  argv: string[],
  out: { stdout: { write(s: string): unknown }; stderr: { write(s: string): unknown } },
  run: () => number | undefined,
): Promise<number> {
  const configure = (cmd: Command) => {
    cmd.exitOverride();
    cmd.configureOutput({
      writeOut: (s) => void out.stdout.write(s),
      writeErr: (s) => void out.stderr.write(s),
      outputError: (s, write) => {
        const path = commandPath(cmd);
        write(`${path}: ${s.replace(/^error: /, '').trimEnd()}\nRun \`${path} --help\` for usage.\n`);
      },
    });
    for (const sub of cmd.commands) configure(sub);
  };
  configure(program);
  try {
    await program.parseAsync(argv, { from: 'user' });
    return run() ?? EXIT.ok;
  } catch (err) {
    if (err instanceof CommanderError) {
      if (
        err.code === 'commander.helpDisplayed' ||
        err.code === 'commander.version' ||
        err.code === 'commander.help'
      )
        return EXIT.ok;
      return err.exitCode === 0 ? EXIT.ok : EXIT.usage;
    }
    throw err;
  }
}

/** `shardhub submit`, for messages. */
export function commandPath(cmd: Command): string {
  const names: string[] = [];
  for (let c: Command | null = cmd; c; c = c.parent) names.unshift(c.name());
  return names.join(' ');
}

/** Output streams and environment of a run of the CLI (tests capture them). */
export interface CliIo {
  stdout: { write(s: string): unknown };
  stderr: { write(s: string): unknown };
  env: NodeJS.ProcessEnv;
}

/** What a command's action gets: its commander command (for option values) and the streams. */
export type Action = (cmd: Command, io: CliIo) => Promise<number>;

/** The version in package.json. */
export function version(): string {
  const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as {
    version: string;
  };
  return pkg.version;
}

/**
 * How the user runs shardhub, for the commands printed in banners and messages: `shardhub` when
 * linked or installed, `npm run shardhub --` from a checkout (`npm start`, `npm run shardhub`).
 */
export function invokedAs(env: NodeJS.ProcessEnv = process.env, argv1 = process.argv[1] ?? ''): string {
  if (env.npm_lifecycle_event === 'start' || env.npm_lifecycle_event === 'shardhub')
    return 'npm run shardhub --';
  const name = basename(argv1);
  if (name === 'shardhub' || name === 'shardhub.js') return 'shardhub';
  return 'npm run shardhub --';
}

/** Prints an error in one line (never a stack trace) and gives its exit code. */
export function reportError(err: unknown, path: string, io: Pick<CliIo, 'stderr'>): number {
  if (err instanceof UsageError) {
    io.stderr.write(`${path}: ${err.message}\nRun \`${path} --help\` for usage.\n`);
    return EXIT.usage;
  }
  if (err instanceof CliError) {
    io.stderr.write(`${path}: ${err.message}\n`);
    return err.exitCode;
  }
  const message = err instanceof Error ? err.message : String(err);
  io.stderr.write(`${path}: ${message}\n`);
  return EXIT.failed;
}

/** The hub and operator token, which every operator command takes. */
export const OPERATOR_CONNECTION = {
  hub: { type: 'url', help: 'the hub URL, e.g. http://localhost:8080', env: 'SHARDHUB_HUB', required: true },
  token: {
    type: 'string',
    help: 'operator token',
    env: 'SHARDHUB_OPERATOR_TOKEN',
    required: true,
    arg: 'TOKEN',
  },
} satisfies OptionTable;
