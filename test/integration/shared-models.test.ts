/**
 * Uploaded models on a store shared by several hubs (real PostgreSQL, `test/helpers/postgres.ts`):
 * a model uploaded through one hub is stored with its manifest, and every other hub lists it,
 * serves its bytes, takes jobs on it by name, and runs the chunks of a job on it that its own
 * workers claim. A hub that starts later registers it as it starts. A model in the store that
 * cannot be registered is reported among the models' problems, never a failed request.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import onnxProto from 'onnx-proto';
import pg from 'pg';
import type { HubServer } from '../../server/app.ts';
import { Rest, jobDone, startHub, startNode, tempDir, waitFor } from '../helpers/grid.ts';
import { startPostgres, type TestPostgres } from '../helpers/postgres.ts';

const { onnx } = onnxProto;
const OPERATOR = 'op_models-test-operator-token-0123456789';
const JOIN = 'join_models-test-join-token-0123456789';

/** mlp-tiny's items: x[1, 8] float32. */
function items(n: number) {
  return Array.from({ length: n }, (_, i) => {
    const x = new Float32Array(8).map((_, j) => i + j / 8);
    return {
      name: `i${String(i).padStart(4, '0')}`,
      tensors: [{ name: 'x', dtype: 'float32' as const, dims: [1, 8], data: new Uint8Array(x.buffer) }],
    };
  });
}

describe('uploaded models on a store several hubs share', () => {
  const tmp = tempDir('shardhub-models-');
  let pgServer: TestPostgres | undefined;
  let skip: string | undefined;
  const hubs: HubServer[] = [];
  const closers: (() => Promise<void>)[] = [];

  before(async () => {
    const started = await startPostgres();
    if ('skip' in started) skip = started.skip;
    else pgServer = started;
  });
  after(async () => {
    for (const c of closers.reverse()) await c();
    for (const h of hubs) await h.close();
    await pgServer?.stop();
    tmp.cleanup();
  });

  test('a model uploaded through hub a is listed, served and run by hub b, and registered by a hub started later', async (t) => {
    if (skip) return t.skip(skip);
    const url = (pgServer as TestPostgres).url;
    const config = { store: url, operatorToken: OPERATOR, joinToken: JOIN, hub: { leaseMs: 2000 } };
    const a = await startHub(join(tmp.dir, 'a'), config);
    hubs.push(a);
    const b = await startHub(join(tmp.dir, 'b'), config);
    hubs.push(b);
    const restA = new Rest(a.url, OPERATOR);
    const restB = new Rest(b.url, OPERATOR);

    // mlp-tiny under a doc string of its own: other bytes (a registry takes each bytes once).
    const tiny = a.hub.models.byName('mlp-tiny');
    assert.ok(tiny, 'mlp-tiny is built (npm run models)');
    const bytes = onnx.ModelProto.encode({
      ...onnx.ModelProto.decode(readFileSync(a.hub.models.filePath(tiny.sha256)!)),
      docString: 'uploaded to one hub of several',
    }).finish();
    const sha = createHash('sha256').update(bytes).digest('hex');
    const up = await restA.req('POST', '/api/models?name=shared-tiny&atol=0.001&rtol=0.01', undefined, bytes);
    assert.equal(up.status, 201, JSON.stringify(up.json));
    assert.equal(up.json.data.sha256, sha);
    assert.equal(b.hub.models.byName('shared-tiny'), undefined, 'hub b has not seen it yet');

    // Hub b lists it (with a's manifest) and serves its bytes, public like every model's.
    const listed = (await restB.data('GET', '/api/models')).models as { name: string; sha256: string }[];
    const there = listed.find((m) => m.name === 'shared-tiny');
    assert.ok(there, 'hub b lists the model uploaded through hub a');
    assert.equal(there.sha256, sha);
    assert.deepEqual(
      { tolerance: b.hub.models.bySha(sha)?.tolerance, inputs: b.hub.models.bySha(sha)?.inputs },
      { tolerance: up.json.data.tolerance, inputs: up.json.data.inputs },
      "hub b registered it with hub a's manifest",
    );
    const served = await new Rest(b.url, undefined).req('GET', `/api/models/${sha}`);
    assert.equal(served.status, 200);
    assert.equal(createHash('sha256').update(served.bytes).digest('hex'), sha, 'hub b serves the same bytes');

    // A job on it submitted on hub a, by name, run by a node (real onnxruntime-node) only hub b
    // has: b claims the job's chunks, and its node downloads the model from b.
    const node = startNode(b.url, JOIN, join(tmp.dir, 'node'));
    closers.push(async () => {
      node.child.kill('SIGTERM');
      await node.exited;
    });
    await waitFor(
      'a node online on hub b',
      () => [...b.hub.workers.values()].some((w) => w.state === 'online'),
      60_000,
    );
    const sent = items(200);
    const jobId = await restA.submit('shared-tiny', sent);
    const view = await jobDone(restA, jobId, 90_000).catch(async (err: Error) => {
      const d = new pg.Client({ connectionString: url });
      await d.connect();
      const q = async (sql: string) => JSON.stringify((await d.query(sql)).rows);
      const info = [
        JSON.stringify(await restB.data('GET', `/api/jobs/${jobId}`)),
        JSON.stringify(await restB.data('GET', `/api/workers`)),
        await q('SELECT id, job_id, first_id, last_id, cursor, hub_id FROM chunks'),
        await q('SELECT id, epoch, state FROM hubs'),
      ];
      await d.end();
      throw new Error(`${err.message}\n${info.join('\n')}`);
    });
    assert.equal(view.done, sent.length, "every item done by hub b's node");
    assert.equal(view.model, 'shared-tiny');

    // A job submitted on a hub that never saw the model, by sha256.
    const c = await startHub(join(tmp.dir, 'c'), config);
    hubs.push(c);
    assert.equal(c.hub.models.bySha(sha)?.name, 'shared-tiny', 'a hub started later registers it at start');

    // A model the store holds without a manifest cannot be registered: it is a problem, not an error.
    const db = new pg.Client({ connectionString: url });
    await db.connect();
    const junk = Buffer.from('not a model');
    const junkSha = createHash('sha256').update(junk).digest('hex');
    await db.query('INSERT INTO models (sha256, name, size, bytes) VALUES ($1, $2, $3, $4)', [
      junkSha,
      'junk',
      junk.byteLength,
      junk,
    ]);
    await db.end();
    const r = await restB.data('GET', '/api/models');
    assert.ok(
      (r.problems as string[]).some((p) => p.includes('"junk"') && p.includes('without a manifest')),
      JSON.stringify(r.problems),
    );
    assert.equal((await new Rest(b.url, undefined).req('GET', `/api/models/${junkSha}`)).status, 404);
    const refused = await restB.req('POST', '/api/jobs', { model: 'junk' });
    assert.equal(refused.status, 404);
    assert.match(refused.json.error.message, /unknown model "junk"/);
    await waitFor('hub a still answers', async () => (await restA.req('GET', '/api/health')).status === 200);
  });
});
