#!/usr/bin/env node
// The `shardhub` command after `npm link` or a global install: runs server/cli.ts through tsx.
// `shardhub node` holds SIGINT/SIGTERM before tsx loads (common/hold-node-signals.mjs).
await import('../common/hold-node-signals.mjs');
const { register } = await import('tsx/esm/api');
register();
const { main } = await import('../server/cli.ts');
process.exit(await main(process.argv.slice(2)));
