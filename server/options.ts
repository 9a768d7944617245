/**
 * Command-line options for every subcommand, declared once: flag, env var, type, default, help.
 * Precedence is flags over env over config file (`--config FILE`, JSON) over defaults, and
 * `--help` is generated from the same table, so the two cannot drift apart.
 */
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';

/** One option of a command. */
export interface OptionSpec {
  type: 'string' | 'int' | 'number' | 'boolean';
  help: string;
  env?: string;
  default?: string | number | boolean;
  /** Smallest allowed value for numbers. */
  min?: number;
  required?: boolean;
  /** For booleans: also accept `--no-<name>`. */
  negatable?: boolean;
  short?: string;
  /** Placeholder in help, e.g. URL. */
  arg?: string;
}

export type OptionTable = Record<string, OptionSpec>;
export type OptionValues = Record<string, string | number | boolean | undefined>;

/** A problem with the user's options; the CLI prints its message and exits 2. */
export class UsageError extends Error {
  override name = 'UsageError';
}

/** Renders `--help` text for a command. */
export function helpText(
  usage: string,
  summary: string,
  table: OptionTable,
  examples: string[] = [],
): string {
  const rows = Object.entries(table).map(([name, o]) => {
    const flag = `--${name}${o.type === 'boolean' ? '' : ` ${o.arg ?? o.type.toUpperCase()}`}`;
    const extra = [
      o.required ? 'required' : undefined,
      o.default !== undefined ? `default ${String(o.default)}` : undefined,
      o.env ? `env ${o.env}` : undefined,
      o.negatable ? `--no-${name} to turn off` : undefined,
    ].filter(Boolean);
    return `  ${flag.padEnd(28)} ${o.help}${extra.length ? ` (${extra.join('; ')})` : ''}`;
  });
  const ex = examples.length ? `\nExamples:\n${examples.map((e) => `  ${e}`).join('\n')}\n` : '';
  return `Usage: ${usage}\n\n${summary}\n\nOptions:\n${rows.join('\n')}\n  ${'--config FILE'.padEnd(28)} JSON file with any of these options by name\n  ${'--help'.padEnd(28)} show this help\n${ex}`;
}

/**
 * Parses argv against a table. Returns `{help: true}` when --help was given.
 * Throws UsageError with a precise message for anything wrong.
 */
export function parseOptions(
  argv: string[],
  table: OptionTable,
  env: NodeJS.ProcessEnv = process.env,
): { help: boolean; values: OptionValues; positionals: string[] } {
  const parseSpec: Record<string, { type: 'string' | 'boolean'; short?: string }> = {
    help: { type: 'boolean', short: 'h' },
    config: { type: 'string' },
  };
  for (const [name, o] of Object.entries(table)) {
    parseSpec[name] = {
      type: o.type === 'boolean' ? 'boolean' : 'string',
      ...(o.short ? { short: o.short } : {}),
    };
    if (o.type === 'boolean' && o.negatable) parseSpec[`no-${name}`] = { type: 'boolean' };
  }
  let parsed;
  try {
    parsed = parseArgs({ args: argv, options: parseSpec, allowPositionals: true, strict: true });
  } catch (err) {
    throw new UsageError((err as Error).message.replace(/\. To specify a positional.*$/s, ''));
  }
  const flags = parsed.values as Record<string, string | boolean | undefined>;
  if (flags.help) return { help: true, values: {}, positionals: parsed.positionals };

  let file: Record<string, unknown> = {};
  if (typeof flags.config === 'string') {
    try {
      file = JSON.parse(readFileSync(flags.config, 'utf8')) as Record<string, unknown>;
    } catch (err) {
      throw new UsageError(`cannot read config file ${flags.config}: ${(err as Error).message}`);
    }
    if (typeof file !== 'object' || file === null || Array.isArray(file)) {
      throw new UsageError(`config file ${flags.config} must hold a JSON object`);
    }
    for (const key of Object.keys(file)) {
      if (!(key in table)) throw new UsageError(`config file ${flags.config}: unknown option "${key}"`);
    }
  }

  const values: OptionValues = {};
  for (const [name, o] of Object.entries(table)) {
    let raw: unknown;
    let from = `--${name}`;
    if (flags[name] !== undefined) raw = flags[name];
    else if (o.negatable && flags[`no-${name}`]) raw = false;
    else if (o.env && env[o.env] !== undefined && env[o.env] !== '') {
      raw = env[o.env];
      from = `env ${o.env}`;
    } else if (file[name] !== undefined) {
      raw = file[name];
      from = `config "${name}"`;
    } else raw = o.default;
    if (raw === undefined) {
      if (o.required) throw new UsageError(`--${name} is required (${o.help})`);
      values[name] = undefined;
      continue;
    }
    values[name] = coerce(name, o, raw, from);
  }
  return { help: false, values, positionals: parsed.positionals };
}

function coerce(name: string, o: OptionSpec, raw: unknown, from: string): string | number | boolean {
  switch (o.type) {
    case 'boolean':
      if (typeof raw === 'boolean') return raw;
      if (raw === 'true' || raw === '1') return true;
      if (raw === 'false' || raw === '0') return false;
      throw new UsageError(`${from} must be true or false`);
    case 'string':
      if (typeof raw !== 'string' || raw === '') throw new UsageError(`${from} must be a non-empty string`);
      return raw;
    case 'int':
    case 'number': {
      const n = typeof raw === 'number' ? raw : Number(raw);
      if (!Number.isFinite(n) || (o.type === 'int' && !Number.isInteger(n))) {
        throw new UsageError(
          `${from} must be ${o.type === 'int' ? 'an integer' : 'a number'}, got "${String(raw)}"`,
        );
      }
      if (o.min !== undefined && n < o.min) throw new UsageError(`--${name} must be >= ${o.min}, got ${n}`);
      return n;
    }
  }
}
