/** Log lines: JSON for machines, lines for people (pino-pretty) on a terminal; neither can be forged. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { clean, humanFormatter, roundForPeople } from '../../server/logger.ts';

const human = humanFormatter(false);

test('a pino line reads as time, level, name, message and fields, on one line', () => {
  const line = JSON.stringify({
    level: 40,
    time: new Date(2026, 10, 22, 12, 34, 56, 789).getTime(),
    pid: 1,
    hostname: 'h',
    name: 'hub',
    workerId: 'n-1',
    reason: 'no heartbeat for 6556 ms',
    requeued: 2,
    msg: 'worker offline',
  });
  assert.equal(
    human(line),
    '[12:34:56.789] WARN: hub: worker offline {"workerId":"n-1","reason":"no heartbeat for 6556 ms","requeued":2}\n',
  );
});

test('neither a value nor the message can start a line of its own; what is not JSON passes through', () => {
  const forged = JSON.stringify({
    level: 30,
    time: 0,
    name: 'hub',
    msg: 'x\n[00:00:00.000] ERROR: hub: fake message',
    name2: 'a\n[00:00:00.000] ERROR: hub: fake',
  });
  const out = human(forged);
  assert.equal(out.split('\n').length, 2, `one line: ${out}`);
  assert.match(out, /"name2":"a\\n\[00:00:00\.000\] ERROR: hub: fake"/);
  assert.match(out, /x\\u000a\[00:00:00\.000\] ERROR/);
  assert.equal(human('not json\n'), 'not json\n');
  const warn = human(
    JSON.stringify({ level: 40, time: 0, name: 'node', error: 'websocket error', msg: 'cannot reach hub' }),
  );
  assert.equal(warn.split('\n').length, 2, `an error message stays on its line: ${warn}`);
  assert.match(warn, /cannot reach hub \{"error":"websocket error"\}/);
  assert.equal(clean('a\nb'), 'a\\u000ab');
});

test('fractional numbers are rounded for people; whole numbers are kept', () => {
  assert.equal(roundForPeople(9.821329425692623), 9.82);
  assert.equal(roundForPeople(46.2371), 46.2);
  assert.equal(roundForPeople(1234.5678), 1235);
  assert.equal(roundForPeople(0.000123456), 0.000123);
  assert.equal(roundForPeople(1796566071626), 1796566071626);
  assert.equal(roundForPeople(7), 7);
});
