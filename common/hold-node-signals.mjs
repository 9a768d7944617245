// Preloaded with `--import` before tsx (`npm run shardhub`, `bin/shardhub.js`): when this process
// is to run a native node (`shardhub node ...`, `native/main.ts`), it holds SIGINT, SIGTERM and
// SIGHUP from its first moment (`early-signals.mjs`). Other commands keep Node's defaults.
import { holdSignals } from './early-signals.mjs';

const entry = process.argv[1] ?? '';
const command = process.argv.slice(2).find((a) => !a.startsWith('-'));
if (/native[\\/]main\.ts$/.test(entry) || (command === 'node' && /(cli\.ts|shardhub(\.js)?)$/.test(entry)))
  holdSignals();
