/**
 * Shared fixtures of the hostile tests: workers of the attacker's own making (raw Socket.IO clients
 * speaking the protocol), and a grid of honest sim nodes on the noop model (y = x) for them to lie
 * to, with the assertions that what the hub stored is still exact.
 */
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import type { Socket } from 'socket.io-client';
import type { ModelInfo } from '../../protocol/model.ts';
import { unpackTensors, type NamedItem } from '../../protocol/pack.ts';
import { compareTensors } from '../../protocol/tensor.ts';
import type { HubConfig, HubServer } from '../../server/app.ts';
import { SqliteStore } from '../../server/store/sqlite.ts';
import { TrustStore, type TrustRecord } from '../../server/store/trust-store.ts';
import { DEFAULT_TRUST_OPTIONS, type TrustOptions } from '../../server/trust.ts';
import { calibrationInputs } from '../../worker/calibration.ts';
import { Rest, startHub, startNode, waitFor, type Proc } from './grid.ts';
import {
  answerBenchmarks,
  noopResults,
  rawWorker,
  subtleLie,
  type RawShard,
  type RawWorkerOptions,
} from './raw-worker.ts';

/** A fake worker's connection; `close` ends it. */
export type FakeSocket = Socket & { close(): void };

/** A shard as a fake worker reads it. */
export type FakeShard = RawShard;

export { noopResults };

/**
 * A browser worker (a native node with `token`) of the test's own making, registered. With
 * `itemsPerSec` it answers benchmarks with that rate (without, it never answers one and gets no
 * work), and hands every shard to `answer`. `register` overrides fields of its register request.
 */
export function fakeWorker(
  url: string,
  workerId: string,
  opts: RawWorkerOptions & {
    itemsPerSec?: number;
    answer?: (shard: FakeShard, s: FakeSocket) => void;
  } = {},
): Promise<FakeSocket> {
  const { itemsPerSec, answer, before, ...raw } = opts;
  return rawWorker(url, workerId, {
    ...raw,
    before: (s) => {
      if (itemsPerSec !== undefined) answerBenchmarks(s, itemsPerSec);
      if (answer) s.on('shard:assign', (shard: FakeShard) => answer(shard, s));
      before?.(s);
    },
  });
}

/**
 * A liar on the noop model: honest for its first `after` items (and while `lying` says no), then it
 * tells the subtle lie on a `rate` share of items (every item with rate 1). It answers each shard in
 * one message. With `token`, a native node.
 */
export function liarWorker(
  url: string,
  workerId: string,
  opts: { rate: number; after?: number; lying?: () => boolean; token?: string },
): Promise<FakeSocket> {
  let seen = 0;
  return fakeWorker(url, workerId, {
    token: opts.token,
    itemsPerSec: 2000,
    register: { concurrency: 4 },
    answer: (shard, s) => {
      const results = noopResults(shard, (y) => {
        const lies = seen++ >= (opts.after ?? 0) && (opts.lying?.() ?? true);
        if (lies && Math.random() < opts.rate) subtleLie(y);
      });
      setTimeout(() => s.emit('items:done', { results }), 5);
    },
  });
}

/** A hub with honest sim nodes on the noop model, for fake workers to attack. */
export interface HostileGrid {
  hub: HubServer;
  rest: Rest;
  model: ModelInfo;
  /** `n` noop items named `i0`…, their inputs drawn from `seed` on. */
  items(n: number, seed?: number): NamedItem[];
  /** Waits for a job's completion; returns its status. */
  completed(jobId: string, ms?: number): Promise<Record<string, unknown> & { done: number }>;
  /**
   * Asserts every stored result of a noop job equals its input (no corrupted result stands);
   * returns how many there are.
   */
  assertExact(jobId: string, sent: NamedItem[]): Promise<number>;
  /** Closes what the grid started, fake workers handed to it included. */
  close(): Promise<void>;
  /** Fake workers to close with the grid. */
  fakes: FakeSocket[];
}

/**
 * Starts a hub in `dataDir` with `nodes` sim nodes (each `--item-ms itemMs`) online. `records` are
 * trust records stored before the hub opens (a worker proven in an earlier life).
 */
export async function hostileGrid(
  dataDir: string,
  opts: {
    nodes?: number;
    itemMs: number;
    trust?: Partial<TrustOptions>;
    hub?: Partial<HubConfig['hub']>;
    records?: TrustRecord[];
  },
): Promise<HostileGrid> {
  if (opts.records?.length) {
    // The hub's own stores, opened as the hub opens them (its store first: it makes the file).
    mkdirSync(dataDir, { recursive: true });
    const file = join(dataDir, 'hub.sqlite');
    const store = SqliteStore.open(file);
    const trust = TrustStore.open(file);
    for (const r of opts.records) trust.putTrust(r);
    trust.close();
    store.close();
  }
  const hub = await startHub(dataDir, {
    hub: { ...opts.hub, trust: { ...DEFAULT_TRUST_OPTIONS, ...opts.trust } },
  });
  const nodes: Proc[] = [];
  const fakes: FakeSocket[] = [];
  const close = async () => {
    for (const f of fakes) f.close();
    for (const n of nodes) n.child.kill('SIGKILL');
    await hub.close();
  };
  try {
    const args = ['--speed', '1', '--item-ms', String(opts.itemMs)];
    nodes.push(...(await simNodes(hub, opts.nodes ?? 2, args, `${dataDir}-nodes`)));
  } catch (err) {
    await close();
    throw err;
  }
  const model = hub.hub.models.byName('noop');
  assert.ok(model, 'the noop model is built');
  const rest = new Rest(hub.url, hub.tokens.operatorToken);
  return {
    hub,
    rest,
    model,
    fakes,
    close,
    items: (n, seed = 0) =>
      Array.from({ length: n }, (_, i) => ({ name: `i${i}`, tensors: calibrationInputs(model, seed + i) })),
    completed: (jobId, ms = 120_000) =>
      waitFor(
        `job ${jobId} completed`,
        async () => {
          const st = await rest.data('GET', `/api/jobs/${jobId}`);
          return st.state === 'completed' ? st : undefined;
        },
        ms,
        100,
      ),
    assertExact: async (jobId, sent) => {
      const byName = new Map(sent.map((it) => [it.name, it]));
      let n = 0;
      for await (const r of hub.hub.jobs.results(jobId)) {
        n++;
        const x = byName.get(r.name)?.tensors[0];
        const y = unpackTensors(r.outputs)[0];
        assert.ok(x && y);
        assert.equal(
          compareTensors({ ...y, name: 'x' }, x, model.tolerance),
          undefined,
          `job ${jobId}, item ${r.name} (id ${r.itemId}), stored from ${r.workerId}`,
        );
      }
      return n;
    },
  };
}

/** Sim nodes on the noop model, online; their state lives under `stateDir`. */
export async function simNodes(hub: HubServer, n: number, args: string[], stateDir: string): Promise<Proc[]> {
  const nodes: Proc[] = [];
  for (let i = 0; i < n; i++)
    nodes.push(
      startNode(hub.url, hub.tokens.joinToken, join(stateDir, `s${Date.now()}-${i}`), [
        '--backend',
        'sim',
        ...args,
      ]),
    );
  await waitFor(
    'nodes online',
    () =>
      [...hub.hub.workers.values()].filter((w) => w.state === 'online' && w.kind === 'native').length >= n,
    60_000,
  );
  return nodes;
}
