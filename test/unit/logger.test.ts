/** Log lines: JSON for machines, short lines for people on a terminal; neither can be forged. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { clean, humanLine } from '../../server/logger.ts';

test('a pino line reads as time, level, name, message and fields', () => {
  const line = JSON.stringify({
    level: 40,
    time: Date.UTC(2026, 10, 22, 12, 34, 56, 789),
    pid: 1,
    hostname: 'h',
    name: 'hub',
    workerId: 'n-1',
    reason: 'no heartbeat for 6556 ms',
    requeued: 2,
    msg: 'worker offline',
  });
  assert.equal(
    humanLine(line),
    '12:34:56.789 WARN  hub: worker offline  workerId=n-1 reason="no heartbeat for 6556 ms" requeued=2\n',
  );
});

test('a value cannot start a line of its own, and what is not JSON passes through', () => {
  const forged = JSON.stringify({
    level: 30,
    time: 0,
    name: 'hub',
    msg: 'x',
    name2: 'a\n00:00:00.000 ERROR hub: fake',
  });
  const out = humanLine(forged);
  assert.equal(out.split('\n').length, 2, `one line: ${out}`);
  assert.match(out, /name2="a\\n00:00:00\.000 ERROR hub: fake"/);
  assert.equal(humanLine('not json\n'), 'not json\n');
  assert.equal(clean('a\nb'), 'a\\u000ab');
});
