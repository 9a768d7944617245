import type { Relaunch } from '../common/relaunch.ts';

/**
 * The Node flags a hub runs with: `npm start` passes them, and the benchmarks start their hubs with
 * them (`bench/_scale.ts`). `shardhub serve` started without them (the `shardhub` command, `npm run
 * shardhub -- serve`) runs itself again as a child that has them, as `shardhub node` does with its
 * own (`native/launch.ts`, `common/relaunch.ts`).
 *
 * - `--max-semi-space-size=32` (MB; Node 20's default is 16): V8's young generation, where every
 *   Socket.IO packet, result and refill of the hub is allocated and most die. Twice the room means
 *   about half as many scavenges, each copying the same few survivors: less CPU per results
 *   message, and fewer of the pauses that make its slowest answers (`npm run bench --
 *   connections` shows both).
 */
export const HUB_NODE_FLAGS: readonly string[] = ['--max-semi-space-size=32'];

/** How `shardhub serve` runs itself again when started without {@link HUB_NODE_FLAGS}. */
export const HUB_RELAUNCH: Relaunch = { command: 'serve', flags: HUB_NODE_FLAGS, env: {} };
