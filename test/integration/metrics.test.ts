/**
 * `GET /metrics` over a real hub with two sim nodes: Prometheus text format, behind the operator
 * token, with figures that match the hub's own (workers by state, items done, queue depth, job
 * progress, steals and speculative copies as the job's fairness report counts them).
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { NamedItem } from '../../protocol/pack.ts';
import type { HubServer } from '../../server/app.ts';
import { calibrationInputs } from '../../worker/calibration.ts';
import { Rest, startHub, startNode, tempDir, waitFor, type Proc } from '../helpers/grid.ts';

const NOOP = {
  inputs: [{ name: 'x', dtype: 'float32' as const, shape: ['N', 4] }],
  calibration: { dims: { x: [1, 4] }, seed: 1 },
};

function items(n: number): NamedItem[] {
  return Array.from({ length: n }, (_, i) => ({ name: `i${i}`, tensors: calibrationInputs(NOOP, i + 1) }));
}

/** One sample of the exposition: name, labels, value. */
interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** Parses Prometheus text format (what this test needs of it: samples, HELP and TYPE lines). */
function parse(text: string): { samples: Sample[]; types: Map<string, string> } {
  const samples: Sample[] = [];
  const types = new Map<string, string>();
  for (const line of text.split('\n')) {
    if (!line.trim()) continue;
    const t = /^# TYPE (\S+) (\S+)$/.exec(line);
    if (t) {
      types.set(t[1] as string, t[2] as string);
      continue;
    }
    if (line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    assert.ok(m, `a valid sample line: ${line}`);
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g))
      labels[l[1] as string] = l[2] as string;
    samples.push({ name: m[1] as string, labels, value: Number(m[3]) });
  }
  return { samples, types };
}

function value(samples: Sample[], name: string, labels: Record<string, string> = {}): number {
  const s = samples.find(
    (x) => x.name === name && Object.entries(labels).every(([k, v]) => x.labels[k] === v),
  );
  assert.ok(s, `metric ${name}${JSON.stringify(labels)} present`);
  return s.value;
}

describe('GET /metrics', () => {
  const tmp = tempDir('shardhub-metrics-');
  let hub: HubServer;
  let rest: Rest;
  const nodes: Proc[] = [];

  before(async () => {
    hub = await startHub(join(tmp.dir, 'hub'));
    rest = new Rest(hub.url, hub.tokens.operatorToken);
    for (let i = 0; i < 2; i++) {
      nodes.push(
        startNode(hub.url, hub.tokens.joinToken, join(tmp.dir, `n${i}`), [
          '--backend',
          'sim',
          '--speed',
          '2',
          '--item-ms',
          '20',
          '--name',
          `m${i}`,
        ]),
      );
    }
    await waitFor(
      'two nodes online',
      () => [...hub.hub.workers.values()].filter((w) => w.state === 'online').length === 2,
      60_000,
    );
  });

  after(async () => {
    for (const n of nodes) n.child.kill('SIGKILL');
    await hub?.close();
    tmp.cleanup();
  });

  test('needs the operator token', async () => {
    assert.equal((await new Rest(hub.url, undefined).req('GET', '/metrics')).status, 401);
    const wrong = await new Rest(hub.url, 'op_nope').req('GET', '/metrics');
    assert.equal(wrong.status, 401);
    assert.equal(wrong.json.error.code, 'unauthorized');
  });

  test('Prometheus text with live and final figures that agree with the hub', async () => {
    const jobId = await rest.submit('noop', items(1500));
    await waitFor('job running', async () => (await hub.hub.jobs.get(jobId))?.state === 'running', 30_000);
    await waitFor(
      'some results',
      async () => ((await hub.hub.jobs.get(jobId))?.doneCount ?? 0) > 200,
      30_000,
    );

    const live = await fetch(`${hub.url}/metrics`, {
      headers: { Authorization: `Bearer ${hub.tokens.operatorToken}` },
    });
    assert.equal(live.status, 200);
    assert.match(live.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
    const { samples, types } = parse(await live.text());
    assert.equal(types.get('shardhub_items_completed_total'), 'counter');
    assert.equal(types.get('shardhub_workers'), 'gauge');
    assert.equal(value(samples, 'shardhub_workers', { state: 'online' }), 2);
    assert.equal(value(samples, 'shardhub_workers', { state: 'offline' }), 0);
    assert.equal(value(samples, 'shardhub_workers_connected', { kind: 'native', backend: 'sim' }), 2);
    assert.ok(value(samples, 'shardhub_items_per_second') > 0, 'items/s while running');
    const progress = value(samples, 'shardhub_job_progress', { job: jobId, model: 'noop' });
    assert.ok(progress > 0 && progress < 1, `progress ${progress} mid-job`);
    assert.equal(value(samples, 'shardhub_job_items', { job: jobId, status: 'total' }), 1500);
    assert.ok(
      value(samples, 'shardhub_queue_depth') + value(samples, 'shardhub_items_in_flight') > 0,
      'work left somewhere',
    );
    assert.equal(value(samples, 'shardhub_jobs', { state: 'running' }), 1);
    // Both nodes asked for a data channel; the noop model's items are too small to go down it.
    assert.equal(value(samples, 'shardhub_data_channels_open'), 2);
    assert.equal(value(samples, 'shardhub_data_channel_bytes_total'), 0);
    assert.ok(
      samples.some((s) => s.name === 'process_cpu_user_seconds_total'),
      'default process metrics',
    );
    const doneLive = value(samples, 'shardhub_items_completed_total');
    assert.ok(doneLive > 0);

    await waitFor(
      'job completed',
      async () => (await hub.hub.jobs.get(jobId))?.state === 'completed',
      60_000,
    );
    const text = Buffer.from((await rest.req('GET', '/metrics')).bytes).toString('utf8');
    const final = parse(text).samples;
    assert.equal(value(final, 'shardhub_job_progress', { job: jobId }), 1);
    assert.equal(value(final, 'shardhub_job_items', { job: jobId, status: 'done' }), 1500);
    assert.equal(value(final, 'shardhub_queue_depth'), 0);
    assert.equal(value(final, 'shardhub_items_in_flight'), 0);
    const workersDone = [...hub.hub.workers.values()].reduce((s, w) => s + w.itemsDone, 0);
    const completed = value(final, 'shardhub_items_completed_total');
    assert.equal(completed, workersDone, 'items completed = the workers’ accepted results');
    assert.ok(completed >= 1500 && completed >= doneLive, 'the counter only grows');
    const fairness = await rest.data('GET', `/api/jobs/${jobId}/fairness`);
    assert.equal(value(final, 'shardhub_steals_total'), fairness.steals);
    assert.equal(value(final, 'shardhub_stolen_items_total'), fairness.stolenItems);
    assert.equal(value(final, 'shardhub_speculative_copies_total'), fairness.speculative);
    assert.equal(value(final, 'shardhub_wasted_items_total'), fairness.wastedItems);
  });
});
