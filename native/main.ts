/**
 * Process entry of `shardhub node` (`node --import tsx native/main.ts --hub URL ...`): runs the
 * command and exits with its code, whatever handles are still open.
 */
import { nodeCommand } from './cli.ts';

process.exit(await nodeCommand(process.argv.slice(2)));
