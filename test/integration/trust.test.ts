/**
 * Results you can trust: liars are caught and quarantined, no corrupted result is accepted, a
 * quarantined worker's unconfirmed results are computed again, and pre-flight refuses broken jobs.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import type { NamedItem } from '../../protocol/pack.ts';
import { DEFAULT_TRUST_OPTIONS } from '../../server/trust.ts';
import { calibrationInputs } from '../../worker/calibration.ts';
import { Rest, checkResults, startHub, startNode, tempDir, waitFor, type Proc } from '../helpers/grid.ts';

describe('trust', () => {
  const tmp = tempDir();
  after(() => tmp.cleanup());

  test('with 20% of workers returning corrupted outputs, no corrupted result is accepted and the liars are quarantined', async () => {
    const hub = await startHub(join(tmp.dir, 'hub'));
    const nodes: Proc[] = [];
    try {
      // Ten nodes on the real mlp-small model; two of them corrupt every output.
      for (let i = 0; i < 10; i++) {
        const liar = i >= 8;
        nodes.push(
          startNode(hub.url, hub.tokens.joinToken, join(tmp.dir, `n${i}`), [
            '--name',
            liar ? `liar${i}` : `honest${i}`,
            ...(liar ? ['--corrupt-rate', '1'] : []),
          ]),
        );
      }
      await waitFor(
        '10 nodes online',
        () => [...hub.hub.workers.values()].filter((w) => w.state === 'online').length === 10,
        90_000,
      );
      const model = hub.hub.models.byName('mlp-small');
      assert.ok(model);
      // Enough items that every liar has finished its benchmark and run some before the job ends: a
      // liar that runs nothing cannot be caught. With 1,500 items that failed 1 run in 4; with
      // 3,000, once the nodes got faster, about 1 in 5 (the honest nodes did 3,000 in 0.3 s).
      const sent: NamedItem[] = Array.from({ length: 20_000 }, (_, i) => ({
        name: `i${i}`,
        tensors: calibrationInputs(model, 100 + i),
      }));
      const rest = new Rest(hub.url, hub.tokens.operatorToken);
      const jobId = await rest.submit('mlp-small', sent);
      const status = await waitFor(
        'job completed',
        async () => {
          const s = await rest.data('GET', `/api/jobs/${jobId}`);
          return s.state === 'completed' ? s : undefined;
        },
        180_000,
        100,
      );
      assert.equal(status.done + status.failed, 20_000);
      // An item whose replicas met two identical liars may end failed (no quorum): never corrupted.
      assert.ok(status.failed <= 15, `${status.failed} items failed`);

      const liars = [...hub.hub.workers.values()].filter((w) => w.name.startsWith('liar'));
      for (const l of liars) {
        const trust = JSON.stringify(hub.hub.trust.record(l.id));
        assert.equal(hub.hub.trust.isQuarantined(l.id), true, `${l.name} is quarantined (trust: ${trust})`);
      }
      const honest = [...hub.hub.workers.values()].filter((w) => w.name.startsWith('honest'));
      for (const h of honest) assert.equal(hub.hub.trust.isQuarantined(h.id), false, `${h.name} is not`);

      await checkResults(hub, jobId, sent, status.failed);
      for await (const r of hub.hub.jobs.results(jobId)) {
        assert.ok(!liars.some((l) => l.id === r.workerId), `item ${r.name}'s result is credited to a liar`);
      }
      const events = (await rest.data('GET', `/api/jobs/${jobId}/events`)).events as {
        type: string;
        data: { workerId?: string };
      }[];
      assert.ok(
        events.some((e) => e.type === 'check_failed'),
        'failed checks are recorded with the job',
      );
      // Once quarantined, a liar's later failed checks (its replicas judged after it was caught) are
      // rejected results, not more strikes: its record and the job's events stop at its quarantine
      // (how many such checks there are depends on timing: hostile.test.ts counts them exactly).
      for (const l of liars) {
        const record = hub.hub.trust.record(l.id);
        const failedChecks = events.filter((e) => e.type === 'check_failed' && e.data.workerId === l.id);
        assert.ok(
          record.strikes <= DEFAULT_TRUST_OPTIONS.strikesToQuarantine,
          `${l.name}: ${record.strikes} strikes on record`,
        );
        assert.ok(
          failedChecks.length <= record.strikes,
          `${l.name}: ${failedChecks.length} check_failed events`,
        );
      }
    } finally {
      for (const n of nodes) n.child.kill('SIGKILL');
      await hub.close();
    }
  });

  test('a job with redundancy 3 is decided by a quorum of distinct workers', async () => {
    const hub = await startHub(join(tmp.dir, 'hub-r'));
    const nodes: Proc[] = [];
    try {
      for (let i = 0; i < 3; i++)
        nodes.push(
          startNode(hub.url, hub.tokens.joinToken, join(tmp.dir, `r${i}`), [
            '--backend',
            'sim',
            '--speed',
            '4',
            '--item-ms',
            '2',
          ]),
        );
      await waitFor(
        '3 nodes',
        () => [...hub.hub.workers.values()].filter((w) => w.state === 'online').length === 3,
        60_000,
      );
      const model = hub.hub.models.byName('noop');
      assert.ok(model);
      const rest = new Rest(hub.url, hub.tokens.operatorToken);
      const sent = Array.from({ length: 60 }, (_, i) => ({
        name: `q${i}`,
        tensors: calibrationInputs(model, 1 + i),
      }));
      const jobId = await rest.submit('noop', sent, { redundancy: 3 });
      await waitFor(
        'done',
        async () => (await rest.data('GET', `/api/jobs/${jobId}`)).state === 'completed',
        60_000,
        50,
      );
      // None failed: replicas wait for workers still benchmarking the model (they did not, once).
      assert.equal(
        (await rest.data('GET', `/api/jobs/${jobId}`)).failed,
        0,
        'no item failed for want of a quorum',
      );
      // Every item ran on at least two distinct workers (quorum 2 of 3 agreeing).
      const f = await rest.data('GET', `/api/jobs/${jobId}/fairness`);
      const work = f.workers.reduce((n: number, w: { items: number }) => n + w.items, 0);
      // Two canaries (a canary's answer is known, so one run checks it), 58 items decided by quorum.
      assert.ok(work >= 2 + 58 * 2, `at least two runs per non-canary item, got ${work} runs for 60 items`);
    } finally {
      for (const n of nodes) n.child.kill('SIGKILL');
      await hub.close();
    }
  });

  test('pre-flight refuses a job whose model does not run, with a clear error, and cancels it', async () => {
    const hub = await startHub(join(tmp.dir, 'hub-p'));
    try {
      const rest = new Rest(hub.url, hub.tokens.operatorToken);
      // An uploaded "model" that parses as ONNX but cannot run: the noop graph with its op renamed.
      const bytes = new Uint8Array(
        readFileSync(join(hub.hub.models.filePath(hub.hub.models.byName('noop')?.sha256 ?? '') ?? '')),
      );
      const text = Buffer.from(bytes);
      const at = text.indexOf('Identity');
      assert.ok(at > 0);
      text.write('Idontity', at);
      const up = await rest.req('POST', '/api/models?name=broken-noop', undefined, new Uint8Array(text));
      assert.equal(up.status, 201, JSON.stringify(up.json));
      const model = up.json.data;
      const job = await rest.data('POST', '/api/jobs', { model: 'broken-noop' });
      const items = [{ name: 'a', tensors: calibrationInputs(model, 1) }];
      const { packItems } = await import('../../protocol/pack.ts');
      await rest.data('POST', `/api/jobs/${job.id}/items`, undefined, packItems(items));
      const seal = await rest.req('POST', `/api/jobs/${job.id}/seal`);
      assert.equal(seal.status, 422);
      assert.equal(seal.json.error.code, 'preflight_failed');
      assert.match(seal.json.error.message, /does not load|does not run/);
      assert.equal((await rest.data('GET', `/api/jobs/${job.id}`)).state, 'cancelled');
    } finally {
      await hub.close();
    }
  });
});
