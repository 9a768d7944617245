/**
 * How a shard's inputs reach a worker, by what it registered: one attachment with item offsets
 * (`packed`), or one attachment per item (`packed` and `packedParts`). Raw Socket.IO clients on a
 * real hub, so the test sees the messages as they arrive.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { io as connect, type Socket } from 'socket.io-client';
import type { PackedParts, PackedTensors, ShardAssign } from '../../protocol/events.ts';
import { unpackTensors } from '../../protocol/pack.ts';
import { shardhubParser } from '../../protocol/socket-parser.ts';
import { compareTensors, type WireTensor } from '../../protocol/tensor.ts';
import { calibrationInputs } from '../../worker/calibration.ts';
import { Rest, startHub, tempDir } from '../helpers/grid.ts';
import { toBytes } from '../../worker/wire.ts';

const tmp = tempDir();
const sockets: Socket[] = [];
after(() => {
  for (const s of sockets) s.disconnect();
  tmp.cleanup();
});

/** A browser-kind worker that registers with `flags`, answers its benchmark, and keeps its shards. */
async function worker(url: string, id: string, flags: { packed?: boolean; packedParts?: boolean }) {
  const s = connect(`${url}/worker`, {
    auth: { workerId: id, workerSecret: 's'.repeat(32) },
    reconnection: false,
    transports: ['websocket'],
    parser: shardhubParser,
  });
  sockets.push(s);
  const shards: ShardAssign[] = [];
  s.on('shard:assign', (shard: ShardAssign) => shards.push(shard));
  s.on('benchmark:run', (_req: unknown, ack: (r: unknown) => void) =>
    ack({ data: { itemsPerSec: 50, batchSize: 1, runs: 3, ms: 60 } }),
  );
  await new Promise<void>((ok) => s.once('connect', () => ok()));
  const reg = await s.timeout(5000).emitWithAck('worker:register', {
    kind: 'browser',
    backend: 'wasm',
    name: id,
    concurrency: 1,
    capabilities: { cores: 1, memoryBytes: 1 },
    ...flags,
  });
  assert.ok('data' in reg, JSON.stringify(reg));
  return shards;
}

test('large items come one attachment each to workers that take parts, joined with offsets to others', async () => {
  const hub = await startHub(join(tmp.dir, 'hub'));
  try {
    const joined = await worker(hub.url, 'packing-joined-1', { packed: true });
    const parts = await worker(hub.url, 'packing-parts-01', { packed: true, packedParts: true });
    const model = hub.hub.models.byName('noop');
    assert.ok(model);
    const sent = new Map<string, WireTensor[]>();
    // 128 KB per item: smaller items are joined even for workers that take parts.
    const big = { ...model, calibration: { ...model.calibration, dims: { x: [8192, 4] } } };
    const items = Array.from({ length: 8 }, (_, i) => {
      const tensors = calibrationInputs(big, 40 + i);
      sent.set(`p${i}`, tensors);
      return { name: `p${i}`, tensors };
    });
    const jobId = await new Rest(hub.url, hub.tokens.operatorToken).submit('noop', items);
    const deadline = Date.now() + 15_000;
    while ((joined.length === 0 || parts.length === 0) && Date.now() < deadline)
      await new Promise((ok) => setTimeout(ok, 50));
    assert.ok(joined.length > 0 && parts.length > 0, 'both workers got a shard');

    // Each item's inputs, as the worker received them, against what was submitted.
    const check = async (id: number, pack: Uint8Array) => {
      const item = await hub.hub.jobs.item(id);
      assert.ok(item && item.jobId === jobId, `item ${id} is one of the job's`);
      const want = sent.get(item.name) as WireTensor[];
      const got = unpackTensors(pack);
      assert.equal(got.length, want.length);
      got.forEach((t, k) =>
        assert.equal(compareTensors(t, want[k] as WireTensor, { atol: 0, rtol: 0 }), undefined),
      );
    };
    for (const shard of joined) {
      const p = shard.packed as PackedTensors;
      assert.ok(p && 'ends' in p && !('parts' in p), 'one attachment with offsets');
      const data = toBytes(p.data);
      assert.equal(p.ends.at(-1), data.byteLength);
      for (const [i, id] of p.ids.entries())
        await check(id, data.subarray(i === 0 ? 0 : (p.ends[i - 1] as number), p.ends[i]));
    }
    for (const shard of parts) {
      const p = shard.packed as PackedParts;
      assert.ok(p && 'parts' in p && !('ends' in p), 'one attachment per item');
      assert.equal(p.parts.length, p.ids.length);
      for (const [i, id] of p.ids.entries()) await check(id, toBytes(p.parts[i]));
    }
  } finally {
    await hub.close();
  }
});
