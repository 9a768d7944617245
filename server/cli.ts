/**
 * `shardhub <command>`: serve, node, submit, jobs, workers. One commander program: one help style,
 * `--version`, and the exit codes in every `--help`. Each command's options are a table
 * (`server/options.ts`) that gives its flags, help, environment variables and defaults.
 * From a checkout: `npm run shardhub -- <command> ...`; after `npm link`: `shardhub <command>`.
 */
import { Command } from 'commander';
import {
  EXIT,
  EXIT_CODES_HELP,
  commandPath,
  reportError,
  runProgram,
  version,
  type Action,
  type CliIo,
} from './options.ts';
import { holdSignals, releaseSignals } from '../common/early-signals.mjs';

/** Each command: its module's `define` adds options and help, its `run` does the work. */
interface CommandModule {
  define(cmd: Command): Command;
  run: Action;
}

const COMMANDS: Record<string, { summary: string; load: () => Promise<CommandModule> }> = {
  serve: {
    summary: 'run a hub (REST API, sockets, pages)',
    load: async () => (await import('./cli-serve.ts')).SERVE,
  },
  node: {
    summary: 'lend this machine to a hub as a native node',
    load: async () => (await import('../native/cli.ts')).NODE,
  },
  submit: {
    summary: 'submit a job, show its progress, download its results',
    load: async () => (await import('./cli-operator.ts')).SUBMIT,
  },
  jobs: {
    summary: 'list, show, wait for, download or cancel jobs',
    load: async () => (await import('./cli-operator.ts')).JOBS,
  },
  workers: {
    summary: 'list workers, with filters',
    load: async () => (await import('./cli-operator.ts')).WORKERS,
  },
  ocr: {
    summary: 'read the text of a folder of scanned pages on the grid',
    load: async () => (await import('./cli-ocr.ts')).OCR,
  },
};

/**
 * Builds the program. Only the command being run is loaded (`serve` never loads onnxruntime, `node`
 * never loads the hub), so the others are defined from their summaries until needed.
 */
async function buildProgram(argv: string[], io: CliIo, result: { code?: number }): Promise<Command> {
  const program = new Command('shardhub')
    .description('A compute grid for ONNX inference.')
    .version(version(), '-v, --version', 'print the version')
    .helpOption('-h, --help', 'show help')
    .helpCommand(false)
    .showSuggestionAfterError(true)
    .addHelpText(
      'after',
      `\nRun \`shardhub <command> --help\` for a command's options.\n\n${EXIT_CODES_HELP}\n`,
    );
  const wanted = argv.find((a) => !a.startsWith('-'));
  for (const [name, c] of Object.entries(COMMANDS)) {
    const cmd = program.command(name).description(c.summary).helpOption('-h, --help', 'show help');
    if (name !== wanted) continue;
    const mod = await c.load();
    mod.define(cmd);
    cmd.addHelpText('after', `\n${EXIT_CODES_HELP}\n`);
    cmd.action(async () => {
      try {
        result.code = await mod.run(cmd, io);
      } catch (err) {
        result.code = reportError(err, commandPath(cmd), io);
      }
    });
  }
  return program;
}

/** Runs the CLI; returns the exit code. */
export async function main(argv: string[], partial: Partial<CliIo> = {}): Promise<number> {
  const io: CliIo = { stdout: process.stdout, stderr: process.stderr, env: process.env, ...partial };
  const result: { code?: number } = {};
  // A node holds SIGINT/SIGTERM from here, before its modules load, until it can act on them.
  if (argv.find((a) => !a.startsWith('-')) === 'node') holdSignals();
  const program = await buildProgram(argv, io, result);
  if (argv.length === 0) {
    io.stdout.write(program.helpInformation());
    return EXIT.usage;
  }
  const first = argv[0] as string;
  if (!first.startsWith('-') && !(first in COMMANDS)) {
    io.stderr.write(
      `shardhub: unknown command "${first}"; the commands are ${Object.keys(COMMANDS).join(', ')}\nRun \`shardhub --help\` for usage.\n`,
    );
    return EXIT.usage;
  }
  try {
    return await runProgram(program, argv, io, () => result.code);
  } finally {
    releaseSignals();
  }
}

const entry = process.argv[1] ?? '';
if (import.meta.url === `file://${entry}` || entry.endsWith('server/cli.ts')) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (err: unknown) => {
      process.stderr.write(`shardhub: ${err instanceof Error ? err.message : String(err)}\n`);
      process.exit(EXIT.failed);
    },
  );
}
