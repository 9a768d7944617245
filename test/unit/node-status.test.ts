/** A node's status line on a terminal: what it says, and that log lines are written above it. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { statusText, TerminalStatus } from '../../native/status.ts';
import type { AgentStats } from '../../worker/agent.ts';

const stats = (o: Partial<AgentStats>): AgentStats =>
  ({
    status: 'running',
    connected: true,
    registered: true,
    paused: false,
    throttle: 1,
    queued: 0,
    running: 0,
    itemsDone: 0,
    itemsFailed: 0,
    rate: 0,
    unsent: 0,
    ...o,
  }) as AgentStats;

test('the status line says what the node does: items done, rate, running and queued, the job', () => {
  assert.equal(
    statusText(stats({ itemsDone: 1234, rate: 46.239, running: 2, queued: 5 }), {
      jobId: 'j_1',
      model: 'ppocr-det',
    }),
    '[working] · 1234 items done · 46 items/s · 2 running, 5 queued · job j_1 (ppocr-det)',
  );
  assert.equal(
    statusText(stats({ itemsDone: 3, itemsFailed: 1, rate: 2.345 }), { jobId: 'j_1', model: 'm' }),
    '[idle] · 3 items done (1 failed) · 2.3 items/s · 0 running, 0 queued',
  );
  assert.match(statusText(stats({ connected: false }), undefined), /^\[connecting\]/);
  assert.match(statusText(stats({ status: 'draining', running: 1 }), undefined), /^\[draining\]/);
});

test('the line is redrawn in place and cut to the terminal width', () => {
  let screen = '';
  const out = { columns: 40, write: (s: string) => (screen += s) } as unknown as NodeJS.WriteStream;
  const line = new TerminalStatus(out);
  line.set('first');
  line.set('x'.repeat(100));
  assert.equal(screen, `first\r\x1b[2K${'x'.repeat(38)}…`);
  screen = '';
  line.clear();
  line.redraw();
  assert.equal(screen, `\r\x1b[2K${'x'.repeat(38)}…`, 'a log line goes between clear and redraw');
  screen = '';
  line.set('x'.repeat(100));
  assert.equal(screen, '', 'the same text is not drawn again');
  line.stop();
  const narrow = new TerminalStatus({
    columns: 0,
    write: (s: string) => (screen = s),
  } as unknown as NodeJS.WriteStream);
  narrow.set('y'.repeat(150));
  assert.equal(screen, `${'y'.repeat(98)}…`, 'no width reported: 100 columns');
  narrow.stop();
});
