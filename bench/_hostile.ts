/**
 * Hostile workers for the trust bench and the soak: clients of our own that speak the worker
 * protocol on the noop model (y = x), as an attacker would write them.
 *
 * - `liar`: a native node (join token) or an anonymous tab that answers honestly for its first
 *   `after` items, then scales one element of the output by 1.05 on a `rate` share of items (1: on
 *   every item). It paces its answers like a node of `itemsPerSec`, and remembers which items it
 *   corrupted, so a bench can tell whether the hub kept any of them.
 * - `failureReporter`: an anonymous tab that claims a huge benchmark and concurrency 256 and answers
 *   every item with a failure report.
 *
 * Both are raw workers (`test/helpers/raw-worker.ts`), as the hostile tests' are.
 */
import type { Socket } from 'socket.io-client';
import {
  answerBenchmarks,
  noopResults,
  rawWorker,
  subtleLie,
  type RawShard,
} from '../test/helpers/raw-worker.ts';

/** A hostile worker's socket, and the items it corrupted (liars). */
export interface Hostile {
  id: string;
  socket: Socket;
  corrupted: Set<number>;
  close(): void;
}

/** A liar; see the file comment. */
export async function liar(
  url: string,
  workerId: string,
  opts: { rate: number; after?: number; token?: string; itemsPerSec?: number },
): Promise<Hostile> {
  const corrupted = new Set<number>();
  const ips = opts.itemsPerSec ?? 500;
  let seen = 0;
  let busyUntil = Date.now();
  const socket = await rawWorker(url, workerId, {
    token: opts.token,
    register: { concurrency: 4 },
    before: (s) => {
      answerBenchmarks(s, ips);
      s.on('shard:assign', (shard: RawShard) => {
        const results = noopResults(
          shard,
          (y, itemId) => {
            if (seen++ >= (opts.after ?? 0) && Math.random() < opts.rate) {
              subtleLie(y);
              corrupted.add(itemId);
            }
          },
          1000 / ips,
        );
        // Paced like a node of `ips` items/s: shards queue behind each other.
        busyUntil = Math.max(busyUntil, Date.now()) + (results.length * 1000) / ips;
        setTimeout(() => s.emit('items:done', { results }), busyUntil - Date.now());
      });
    },
  });
  return { id: workerId, socket, corrupted, close: () => socket.close() };
}

/** A failure-reporter; see the file comment. */
export async function failureReporter(url: string, workerId: string): Promise<Hostile> {
  const socket = await rawWorker(url, workerId, {
    register: { concurrency: 256 },
    before: (s) => {
      answerBenchmarks(s, 1e6);
      s.on('shard:assign', (shard: RawShard) =>
        s.emit('items:failed', {
          failures: shard.items.map((it) => ({
            itemId: it.id,
            jobId: shard.jobId,
            category: 'other',
            message: 'out of memory (not really)',
          })),
        }),
      );
    },
  });
  return { id: workerId, socket, corrupted: new Set(), close: () => socket.close() };
}
