/**
 * Process entry of `shardhub node` (`node --import tsx native/main.ts --hub URL ...`): holds
 * signals before anything else loads (`common/early-signals.ts`), then runs the command and exits
 * with its code, whatever handles are still open.
 */
import { holdSignals } from '../common/early-signals.mjs';

holdSignals();
const { nodeCommand } = await import('./cli.ts');
process.exit(await nodeCommand(process.argv.slice(2)));
