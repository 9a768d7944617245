/**
 * `shardhub <command>`: serve, node, submit, jobs, workers. Each command has `--help`.
 * From a checkout: `npm run shardhub -- <command> ...`; after `npm link`: `shardhub <command>`.
 */
import { UsageError } from './options.ts';

const COMMANDS: Record<string, { summary: string; run: (argv: string[]) => Promise<number> }> = {
  serve: {
    summary: 'run a hub (REST API, sockets, pages)',
    run: async (a) => (await import('./cli-serve.ts')).serveCommand(a, { relaunch: true }),
  },
  node: {
    summary: 'run a native node that lends this machine to a hub',
    run: async (a) => (await import('../native/cli.ts')).nodeCommand(a, {}, { relaunch: true }),
  },
  submit: {
    summary: 'submit a job and download its results',
    run: async (a) => (await import('./cli-operator.ts')).submitCommand(a),
  },
  jobs: {
    summary: 'list, show or cancel jobs',
    run: async (a) => (await import('./cli-operator.ts')).jobsCommand(a),
  },
  workers: {
    summary: 'list workers, with filters',
    run: async (a) => (await import('./cli-operator.ts')).workersCommand(a),
  },
  ocr: {
    summary: 'read the text of a folder of scanned pages on the grid',
    run: async (a) => (await import('./cli-ocr.ts')).ocrCommand(a),
  },
};

function usage(): string {
  const rows = Object.entries(COMMANDS).map(([n, c]) => `  ${n.padEnd(10)} ${c.summary}`);
  return `Usage: shardhub <command> [options]\n\nA compute grid for ONNX inference.\n\nCommands:\n${rows.join('\n')}\n\nRun \`shardhub <command> --help\` for a command's options.\n`;
}

/** Runs the CLI; returns the exit code. */
export async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  if (!cmd || cmd === '--help' || cmd === '-h' || cmd === 'help') {
    process.stdout.write(usage());
    return cmd ? 0 : 2;
  }
  const command = COMMANDS[cmd];
  if (!command) {
    process.stderr.write(`shardhub: unknown command "${cmd}"\n\n${usage()}`);
    return 2;
  }
  try {
    return await command.run(rest);
  } catch (err) {
    if (err instanceof UsageError) {
      process.stderr.write(`shardhub ${cmd}: ${err.message}\nRun \`shardhub ${cmd} --help\` for usage.\n`);
      return 2;
    }
    process.stderr.write(`shardhub ${cmd}: ${(err as Error).message}\n`);
    return 1;
  }
}

if (import.meta.url === `file://${process.argv[1]}` || process.argv[1]?.endsWith('server/cli.ts')) {
  main(process.argv.slice(2)).then(
    (code) => {
      // serve and node keep running; they exit through their own signal handlers.
      if (code !== -1) process.exit(code);
    },
    (err: unknown) => {
      process.stderr.write(`${String(err)}\n`);
      process.exit(1);
    },
  );
}
