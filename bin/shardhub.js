#!/usr/bin/env node
// The `shardhub` command after `npm link` or a global install: runs server/cli.ts through tsx.
import { register } from 'tsx/esm/api';
register();
const { main } = await import('../server/cli.ts');
process.exit(await main(process.argv.slice(2)));
