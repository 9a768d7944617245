/**
 * The operator commands' progress bar (`server/cli-progress.ts`): elapsed time, an ETA from the
 * recent rate, lines logged above it, and a last draw that says how the phase ended.
 */
import assert from 'node:assert/strict';
import { afterEach, beforeEach, mock, test } from 'node:test';
import { formatDuration, Progress } from '../../server/cli-progress.ts';

/** A stream that keeps what is written; a terminal of 200 columns when `tty`. */
function screen(tty: boolean) {
  let text = '';
  const stream = {
    isTTY: tty,
    columns: 200,
    write: (s: string) => {
      text += s;
      return true;
    },
    // cli-progress's terminal calls these on a TTY stream.
    cursorTo: (x: number) => {
      text += x === 0 ? '\r' : '';
    },
    clearLine: () => undefined,
    clearScreenDown: () => undefined,
    moveCursor: () => undefined,
  } as unknown as NodeJS.WriteStream;
  return { stream, text: () => text };
}

beforeEach(() => mock.timers.enable({ apis: ['Date', 'setTimeout'], now: 1_000_000 }));
afterEach(() => mock.timers.reset());

test('durations read as people say them', () => {
  assert.equal(formatDuration(35), '35 s');
  assert.equal(formatDuration(245), '4 min 05 s');
  assert.equal(formatDuration(3720), '1 h 02 min');
  assert.equal(formatDuration(Number.NaN), '-');
});

test('the ETA follows the recent rate, not the average since the start', () => {
  const out = screen(false);
  const bar = new Progress('running', 1000, out.stream);
  // 30 s with nothing done (model download, benchmarks), then 10 items/s for 10 s.
  mock.timers.tick(30_000);
  bar.update(0);
  for (let s = 1; s <= 10; s++) {
    mock.timers.tick(1000);
    bar.update(s * 10);
  }
  bar.stop();
  const last = out.text().trim().split('\n').at(-1) as string;
  assert.match(last, /^running +\S+ 100\/1000 items {2}10 items\/s {2}40 s elapsed {2}eta 1 min 30 s$/);
});

test('a line logged above the bar on a terminal clears its row and the bar goes on below', () => {
  const out = screen(true);
  const bar = new Progress('uploading', 10, out.stream);
  bar.update(3);
  bar.log('upload interrupted at item 4 of 10 (ECONNRESET); retry 1 of 5 in 1 s');
  const after = out.text().split('upload interrupted')[1] as string;
  assert.ok(out.text().includes('\r\x1b[2Kupload interrupted at item 4'), JSON.stringify(out.text()));
  const below = after.split('\n\x1b7')[1] ?? '';
  assert.match(below, /uploading .* 3\/10 items/, 'the bar is drawn again under the line, where it goes on');
  bar.stop('cancelled');
});

test('the last draw says how the phase ended, in place of the ETA', () => {
  for (const end of ['completed', 'cancelled', 'completed, 2 failed']) {
    const out = screen(false);
    const bar = new Progress('running', 5, out.stream);
    mock.timers.tick(2000);
    bar.update(5);
    bar.stop(end);
    const last = out.text().trim().split('\n').at(-1) as string;
    assert.ok(last.endsWith(`elapsed  ${end}`), last);
    assert.doesNotMatch(last, /eta/);
  }
});

test('a bar that starts on a job half done (jobs --wait) counts its rate from what it sees', () => {
  const out = screen(false);
  const bar = new Progress('running', 1000, out.stream);
  bar.update(500);
  for (let s = 1; s <= 3; s++) {
    mock.timers.tick(1000);
    bar.update(500 + s * 10);
  }
  bar.stop();
  const last = out.text().trim().split('\n').at(-1) as string;
  assert.match(last, / 530\/1000 items {2}10 items\/s .* eta 47 s$/);
});
