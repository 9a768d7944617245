/** Choosing the store from `--store`: a URL opens Postgres (with clear errors), anything else SQLite. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, existsSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isPostgresUrl, maskUrl, openStore } from '../../server/store/open-store.ts';

test('postgres:// and postgresql:// URLs name PostgreSQL; paths do not', () => {
  assert.equal(isPostgresUrl('postgres://u@h/db'), true);
  assert.equal(isPostgresUrl('POSTGRESQL://u@h/db'), true);
  assert.equal(isPostgresUrl('/var/lib/shardhub/hub.sqlite'), false);
  assert.equal(isPostgresUrl('data/postgres://x'), false);
});

test('a password in the URL is masked in messages', () => {
  assert.equal(
    maskUrl('postgres://hub:s3cret@db.example:5432/grid'),
    'postgres://hub:***@db.example:5432/grid',
  );
  assert.equal(maskUrl('postgres://hub@db.example/grid'), 'postgres://hub@db.example/grid');
});

test('no store given: the SQLite file in the data dir; a path: that SQLite file', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'shardhub-open-'));
  try {
    const s = await openStore(undefined, { dataDir: dir });
    assert.equal(s.kind, 'sqlite');
    await s.close();
    assert.ok(existsSync(join(dir, 'hub.sqlite')));
    const t = await openStore(join(dir, 'other.sqlite'), { dataDir: dir });
    assert.equal(t.kind, 'sqlite');
    await t.close();
    assert.ok(existsSync(join(dir, 'other.sqlite')));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('an unreachable PostgreSQL is one clear error, without the password', async () => {
  // A port nothing listens on: take one, then free it.
  const port = await new Promise<number>((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const p = (s.address() as { port: number }).port;
      s.close(() => resolve(p));
    });
  });
  await assert.rejects(
    openStore(`postgres://hub:s3cret@127.0.0.1:${port}/grid`, { dataDir: tmpdir() }),
    (err: Error) => {
      assert.match(
        err.message,
        /^cannot open the PostgreSQL store at postgres:\/\/hub:\*\*\*@127\.0\.0\.1:\d+\/grid: .*ECONNREFUSED/,
      );
      assert.doesNotMatch(err.message, /s3cret/);
      return true;
    },
  );
});
