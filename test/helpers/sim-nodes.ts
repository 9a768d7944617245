/**
 * Several native sim nodes in one process: `runNode` (what `shardhub node --backend sim` runs:
 * its Socket.IO connection with reconnects and hub lists, its data channel, its outbox of unacked
 * results), once per node, each with its own identity, state folder and, optionally, local
 * address. For tests that need more nodes than a 2-core machine can give a process each (a node
 * process costs about 150 MB and a second of CPU to start); the nodes share one event loop, which
 * a sim node's timers barely use.
 *
 *   node --import tsx test/helpers/sim-nodes.ts '<SimNodesSpec as JSON>'
 *
 * Prints `sim nodes started: N` once every node is connecting. SIGTERM/SIGINT drain every node
 * (unstarted items go back, results are flushed), then the process exits.
 */
import { join } from 'node:path';
import { runNode, type NodeHandle } from '../../native/node.ts';

/** What {@link startSimNodes} in `grid.ts` passes to this script. */
export interface SimNodesSpec {
  token: string;
  /** Each node's state and model cache go in a folder of its own under this one. */
  stateDir: string;
  itemMs: number;
  concurrency: number;
  nodes: { id: string; hubs: string[]; localAddress?: string }[];
}

async function main(): Promise<void> {
  const spec = JSON.parse(process.argv[2] ?? '') as SimNodesSpec;
  const handles: NodeHandle[] = [];
  for (const n of spec.nodes) {
    handles.push(
      await runNode({
        hub: n.hubs,
        token: spec.token,
        backend: 'sim',
        sim: { itemMs: spec.itemMs },
        concurrency: spec.concurrency,
        id: n.id,
        name: n.id,
        stateDir: join(spec.stateDir, n.id),
        cacheDir: join(spec.stateDir, n.id, 'cache'),
        // A node of a killed hub tries again soon: the balancer sends it to a live one.
        reconnect: { delayMs: 300, maxDelayMs: 2000 },
        ...(n.localAddress ? { localAddress: n.localAddress } : {}),
      }),
    );
  }
  process.stdout.write(`sim nodes started: ${handles.length}\n`);
  let draining = false;
  const drain = () => {
    if (draining) return;
    draining = true;
    void Promise.allSettled(handles.map((h) => h.drain())).then(() => process.exit(0));
  };
  process.on('SIGTERM', drain);
  process.on('SIGINT', drain);
  await Promise.allSettled(handles.map((h) => h.done));
  process.exit(0);
}

void main().catch((err: unknown) => {
  process.stderr.write(`sim nodes: ${(err as Error).stack ?? String(err)}\n`);
  process.exit(1);
});
