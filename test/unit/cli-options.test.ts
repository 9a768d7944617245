/** The shared option table's values: sizes with units, hub URLs, deadlines, commands as typed. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseDeadline } from '../../server/cli-operator.ts';
import { invokedAs, parseHubUrl, parseSize, UsageError } from '../../server/options.ts';

test('sizes take units: decimal ones count in 1000s, binary ones in 1024s', () => {
  assert.equal(parseSize('8GB'), 8e9);
  assert.equal(parseSize('8 gb'), 8e9);
  assert.equal(parseSize('1.5G'), 1.5e9);
  assert.equal(parseSize('512MiB'), 512 * 2 ** 20);
  assert.equal(parseSize('1000000'), 1e6);
  assert.equal(parseSize('8XB'), undefined);
  assert.equal(parseSize('lots'), undefined);
});

test('a hub URL needs its scheme, and the message says what to type', () => {
  assert.equal(parseHubUrl('http://h:8080/'), 'http://h:8080');
  assert.throws(
    () => parseHubUrl('localhost:8080'),
    (e: unknown) =>
      e instanceof UsageError && /did you mean http:\/\/localhost:8080\?/.test((e as Error).message),
  );
  assert.throws(() => parseHubUrl('hub.example'), /did you mean http:\/\/hub\.example\?/);
  assert.throws(() => parseHubUrl('ftp://x'), /http:\/\/ or https:\/\//);
});

test('a deadline is a duration from now or a date in the future', () => {
  const now = Date.UTC(2026, 0, 1);
  assert.equal(parseDeadline('30m', now), now + 30 * 60_000);
  assert.equal(parseDeadline('2h', now), now + 2 * 3600_000);
  assert.equal(parseDeadline('2026-01-02T00:00:00Z', now), now + 86400_000);
  assert.throws(() => parseDeadline('2025-01-01', now), /in the past/);
  assert.throws(() => parseDeadline('soon', now), /must be a duration/);
});

test('commands are shown as the user types them', () => {
  assert.equal(invokedAs({}, '/usr/local/bin/shardhub'), 'shardhub');
  assert.equal(invokedAs({ npm_lifecycle_event: 'start' }, '/x/server/cli.ts'), 'npm run shardhub --');
  assert.equal(invokedAs({}, '/x/server/cli.ts'), 'npm run shardhub --');
});
