/**
 * `npm run bench -- <name> [--json] [options]`: runs `bench/<name>.ts`, which prints its figures
 * as a table (and as JSON with --json). Benchmarks never pass or fail on time.
 */
import { readdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const names = readdirSync(here)
  .filter((f) => f.endsWith('.ts') && f !== 'run.ts' && !f.startsWith('_'))
  .map((f) => f.slice(0, -3));
const [name, ...args] = process.argv.slice(2);
if (!name || !names.includes(name)) {
  process.stderr.write(`usage: npm run bench -- <${names.join('|')}> [--json]\n`);
  process.exit(2);
}
const mod = (await import(`./${name}.ts`)) as { main: (args: string[]) => Promise<void> };
await mod.main(args);
process.exit(); // with process.exitCode, which a bench may set
