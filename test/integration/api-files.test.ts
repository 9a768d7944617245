/**
 * `POST /api/jobs/:id/files?name=ITEM` (the dashboard's submit form): one item per file, `.npy`
 * or an image for image models, recognized by its bytes, checked against the model, with clear
 * JSON errors for everything else.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { PNG } from 'pngjs';
import { unpackTensors } from '../../protocol/pack.ts';
import { toNumbers } from '../../protocol/tensor.ts';
import type { HubServer } from '../../server/app.ts';
import { writeNpy } from '../../server/io/npy.ts';
import { Rest, startHub, tempDir } from '../helpers/grid.ts';

function npy(values: number[], dims: number[], dtype: 'float32' | 'float64' = 'float32'): Uint8Array {
  const data = dtype === 'float32' ? new Float32Array(values) : new Float64Array(values);
  return writeNpy({ dtype, dims, data: new Uint8Array(data.buffer) });
}

function png(w: number, h: number): Uint8Array {
  const img = new PNG({ width: w, height: h });
  for (let i = 0; i < w * h * 4; i++) img.data[i] = (i * 7) % 256;
  return new Uint8Array(PNG.sync.write(img));
}

describe('POST /api/jobs/:id/files', () => {
  const tmp = tempDir('shardhub-files-');
  let hub: HubServer;
  let rest: Rest;

  before(async () => {
    hub = await startHub(join(tmp.dir, 'hub'));
    rest = new Rest(hub.url, hub.tokens.operatorToken);
  });

  after(async () => {
    await hub?.close();
    tmp.cleanup();
  });

  const open = async (model: string) => (await rest.data('POST', '/api/jobs', { model })).id as string;
  const send = (jobId: string, name: string, body: Uint8Array) =>
    rest.req('POST', `/api/jobs/${jobId}/files?name=${encodeURIComponent(name)}`, undefined, body);

  test('an .npy file becomes one item, with the batch dim added when the file lacks it', async () => {
    const jobId = await open('noop');
    const a = await send(jobId, 'a', npy([1, 2, 3, 4], [4]));
    assert.equal(a.status, 201, JSON.stringify(a.json));
    assert.equal(a.json.data.name, 'a');
    const b = await send(jobId, 'b', npy([5, 6, 7, 8], [1, 4]));
    assert.equal(b.status, 201, JSON.stringify(b.json));
    assert.equal(b.json.data.itemCount, 2);
    const items = (await rest.data('GET', `/api/jobs/${jobId}/items`)).items as {
      id: number;
      name: string;
    }[];
    assert.deepEqual(
      items.map((i) => i.name),
      ['a', 'b'],
    );
    const inputs = await hub.hub.jobs.inputs(items.map((i) => i.id));
    const [x] = unpackTensors(inputs.get(items[0]?.id as number) as Uint8Array);
    assert.deepEqual(x?.dims, [1, 4]);
    assert.equal(x?.name, 'x');
    assert.deepEqual([...toNumbers(x!)], [1, 2, 3, 4]);
  });

  test('files that do not fit the model are refused with the reason', async () => {
    const jobId = await open('noop');
    const wrongType = await send(jobId, 'f64', npy([1, 2, 3, 4], [1, 4], 'float64'));
    assert.equal(wrongType.status, 400);
    assert.equal(wrongType.json.error.code, 'invalid_item');
    assert.match(wrongType.json.error.message, /float64/);
    const wrongShape = await send(jobId, 'short', npy([1, 2, 3], [3]));
    assert.equal(wrongShape.status, 400);
    assert.match(wrongShape.json.error.message, /dim|\[/);
    const image = await send(jobId, 'img', png(4, 4));
    assert.equal(image.status, 400);
    assert.match(image.json.error.message, /takes arrays/);
    const garbage = await send(jobId, 'junk', new TextEncoder().encode('hello, world'));
    assert.equal(garbage.status, 415);
    assert.equal(garbage.json.error.code, 'unsupported_file');
    const truncated = await send(jobId, 'cut', npy([1, 2, 3, 4], [1, 4]).slice(0, -3));
    assert.equal(truncated.status, 400);
    assert.equal((await rest.data('GET', `/api/jobs/${jobId}`)).items, 0, 'nothing was added');
  });

  test('names, jobs and sizes are checked', async () => {
    const jobId = await open('noop');
    const file = npy([1, 2, 3, 4], [4]);
    const noName = await rest.req('POST', `/api/jobs/${jobId}/files`, undefined, file);
    assert.equal(noName.status, 400);
    assert.match(noName.json.error.message, /name/);
    assert.equal((await send(jobId, 'a/b', file)).status, 400);
    assert.equal((await send(jobId, 'x'.repeat(200), file)).status, 400);
    assert.equal((await send('j_nope', 'a', file)).status, 404);
    const empty = await send(jobId, 'empty', new Uint8Array(0));
    assert.equal(empty.status, 400);
    const big = await send(jobId, 'big', new Uint8Array(64 * 1024 * 1024 + 128 * 1024));
    assert.equal(big.status, 413);
    assert.equal((await send(jobId, 'ok', file)).status, 201);
    await rest.data('POST', `/api/jobs/${jobId}/seal`);
    const sealed = await send(jobId, 'late', file);
    assert.equal(sealed.status, 409);
    assert.equal(sealed.json.error.code, 'job_not_open');
  });

  test('image models take PNG files; multi-input models are sent elsewhere', async () => {
    const ocr = await open('ppocr-det');
    const r = await send(ocr, 'page', png(40, 30));
    assert.equal(r.status, 201, JSON.stringify(r.json));
    const vad = await open('silero-vad');
    const multi = await send(vad, 'clip', npy([1, 2, 3, 4], [1, 4]));
    assert.equal(multi.status, 400);
    assert.equal(multi.json.error.code, 'multi_input_model');
    assert.match(multi.json.error.message, /\/items/);
  });

  test('needs the operator token', async () => {
    const jobId = await open('noop');
    const r = await new Rest(hub.url, undefined).req(
      'POST',
      `/api/jobs/${jobId}/files?name=a`,
      undefined,
      npy([1, 2, 3, 4], [4]),
    );
    assert.equal(r.status, 401);
  });
});
