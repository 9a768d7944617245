import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough, Writable } from 'node:stream';
import { checkTarName, readTar, TarError, TarWriter } from '../../server/io/tar.ts';
import { readNpy, writeNpy } from '../../server/io/npy.ts';
import { bytesOf, toNumbers } from '../../protocol/tensor.ts';

interface Entry {
  name: string;
  size: number;
  mode: number;
  mtime: number;
  data: Uint8Array;
}

/** An independent reader: parses ustar headers, verifies checksums, collects entries. */
function parseTar(buf: Uint8Array): Entry[] {
  const out: Entry[] = [];
  const str = (b: Uint8Array) =>
    new TextDecoder().decode(b.subarray(0, b.indexOf(0) < 0 ? b.length : b.indexOf(0)));
  let off = 0;
  for (;;) {
    assert.ok(off + 512 <= buf.length, 'archive ends with two zero blocks');
    const h = buf.subarray(off, off + 512);
    if (h.every((b) => b === 0)) {
      assert.ok(buf.subarray(off, off + 1024).every((b) => b === 0));
      assert.equal(buf.length, off + 1024, 'nothing after the end marker');
      return out;
    }
    let sum = 0;
    for (let i = 0; i < 512; i++) sum += i >= 148 && i < 156 ? 0x20 : (h[i] as number);
    assert.equal(parseInt(str(h.subarray(148, 156)), 8), sum, 'checksum');
    assert.equal(str(h.subarray(257, 263)), 'ustar');
    assert.equal(String.fromCharCode(h[156] as number), '0');
    const prefix = str(h.subarray(345, 500));
    const name = (prefix ? `${prefix}/` : '') + str(h.subarray(0, 100));
    const size = parseInt(str(h.subarray(124, 136)), 8);
    const data = buf.subarray(off + 512, off + 512 + size);
    out.push({
      name,
      size,
      mode: parseInt(str(h.subarray(100, 108)), 8),
      mtime: parseInt(str(h.subarray(136, 148)), 8),
      data,
    });
    off += 512 + Math.ceil(size / 512) * 512;
  }
}

async function collect(fn: (w: TarWriter) => Promise<void>): Promise<Uint8Array> {
  const chunks: Buffer[] = [];
  const sink = new PassThrough();
  sink.on('data', (c: Buffer) => chunks.push(c));
  await fn(new TarWriter(sink));
  return new Uint8Array(Buffer.concat(chunks));
}

const longItem = 'item-' + 'x'.repeat(120); // forces the ustar prefix field

test('a results archive reads back entry by entry with the right names, sizes and bytes', async () => {
  const y = { dtype: 'float32' as const, dims: [1, 3], data: bytesOf(new Float32Array([1, 2, 3])) };
  const npy = writeNpy(y);
  const big = new Uint8Array(1300).map((_, i) => i & 0xff);
  const archive = await collect(async (w) => {
    await w.add('results/a/y.npy', npy, { mtime: 1_700_000_000 });
    await w.add('results/b/empty.bin', new Uint8Array(0), { mtime: 1_700_000_000 });
    await w.add(`results/${longItem}/y.npy`, [npy.subarray(0, 7), npy.subarray(7)], { mtime: 1_700_000_000 });
    await w.add('results/c/big.bin', big, { mtime: 1_700_000_000, mode: 0o600 });
    await w.finish();
  });
  assert.equal(archive.length % 512, 0);
  const entries = parseTar(archive);
  assert.deepEqual(
    entries.map((e) => [e.name, e.size]),
    [
      ['results/a/y.npy', npy.byteLength],
      ['results/b/empty.bin', 0],
      [`results/${longItem}/y.npy`, npy.byteLength],
      ['results/c/big.bin', 1300],
    ],
  );
  assert.deepEqual(entries[0]!.data, npy);
  assert.deepEqual(entries[2]!.data, npy, 'parts are written in order');
  assert.deepEqual(entries[3]!.data, big);
  assert.equal(entries[3]!.mode, 0o600);
  assert.equal(entries[0]!.mtime, 1_700_000_000);
  assert.deepEqual([...toNumbers(readNpy(entries[0]!.data, 'y'))], [1, 2, 3]);
});

test('tar(1) lists and extracts the archive', async (t) => {
  if (spawnSync('tar', ['--version']).status !== 0) {
    t.skip('no tar binary');
    return;
  }
  const dir = await mkdtemp(join(tmpdir(), 'shardhub-tar-'));
  try {
    const npy = writeNpy({ dtype: 'int32', dims: [2], data: bytesOf(new Int32Array([5, 6])) });
    const archive = await collect(async (w) => {
      await w.add('results/one/out.npy', npy, { mtime: 1_700_000_000 });
      await w.add(`results/${longItem}/out.npy`, npy, { mtime: 1_700_000_000 });
      await w.finish();
    });
    await writeFile(join(dir, 'r.tar'), archive);
    const list = spawnSync('tar', ['-tvf', join(dir, 'r.tar')], { encoding: 'utf8' });
    assert.equal(list.status, 0, list.stderr);
    const lines = list.stdout.trim().split('\n');
    assert.equal(lines.length, 2);
    assert.match(lines[0]!, new RegExp(`^-rw-r--r-- .* ${npy.byteLength} .* results/one/out\\.npy$`));
    assert.ok(lines[1]!.endsWith(`results/${longItem}/out.npy`), lines[1]);
    const x = spawnSync('tar', ['-xf', join(dir, 'r.tar'), '-C', dir], { encoding: 'utf8' });
    assert.equal(x.status, 0, x.stderr);
    assert.deepEqual(new Uint8Array(await readFile(join(dir, 'results', longItem, 'out.npy'))), npy);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('names that would escape are refused by the writer and the reader', async () => {
  for (const bad of ['', '/abs/x', 'a/../b', '../x', 'a\\b', 'a//b', 'nul\0x', './x']) {
    assert.throws(() => checkTarName(bad), TarError, JSON.stringify(bad));
    await assert.rejects(
      collect((w) => w.add(bad, new Uint8Array(1))),
      TarError,
      JSON.stringify(bad),
    );
  }
  // A hostile archive (written without the writer's checks) is refused entry by entry.
  const { pack } = await import('tar-stream');
  const p = pack();
  p.entry({ name: '../escape.npy', size: 1 }, Buffer.from([1]));
  p.finalize();
  const chunks: Uint8Array[] = [];
  for await (const c of p) chunks.push(c as Uint8Array);
  await assert.rejects(readAll(new Uint8Array(Buffer.concat(chunks)), 512), /must not contain/);
  // A name longer than ustar's fields still round-trips (pax header).
  const long = `results/${'n'.repeat(300)}/y.npy`;
  const archive = await collect(async (w) => {
    await w.add(long, new Uint8Array([9]));
    await w.finish();
  });
  assert.deepEqual(
    (await readAll(archive, 100)).map((e) => e.name),
    [long],
  );
});

test('the writer waits for a slow reader (backpressure) and fails when the reader goes away', async () => {
  let writes = 0;
  const slow = new Writable({
    highWaterMark: 1024,
    write(_chunk, _enc, cb) {
      writes++;
      setTimeout(cb, 1);
    },
  });
  const w = new TarWriter(slow);
  await w.add('a.bin', new Uint8Array(5000));
  assert.ok(slow.writableLength < 1024, `add waited for the sink to drain (${slow.writableLength} buffered)`);
  await w.add('b.bin', new Uint8Array(5000));
  assert.ok(slow.writableLength < 1024, `add waited for the sink to drain (${slow.writableLength} buffered)`);
  await w.finish();
  assert.ok(writes >= 6, `every chunk reached the sink (${writes})`);
  await assert.rejects(w.add('late', new Uint8Array(1)), /already finished/);

  const gone = new Writable({ highWaterMark: 16, write: () => undefined }); // never calls back
  const w2 = new TarWriter(gone);
  const pending = w2.add('x.bin', new Uint8Array(4096));
  setTimeout(() => gone.destroy(), 5);
  await assert.rejects(pending, /closed/);
});

/** `bytes` as a stream of chunks of `size` bytes (the last shorter). */
async function* chunked(bytes: Uint8Array, size: number): AsyncGenerator<Uint8Array> {
  for (let off = 0; off < bytes.byteLength; off += size) yield bytes.subarray(off, off + size);
}

async function readAll(bytes: Uint8Array, size: number, max?: number) {
  const out: { name: string; data: Uint8Array }[] = [];
  for await (const e of readTar(chunked(bytes, size), max)) out.push(e);
  return out;
}

test('readTar gives back what the writer wrote, however the stream is cut', async () => {
  const big = new Uint8Array(5000).map((_, i) => (i * 7) & 0xff);
  const archive = await collect(async (w) => {
    await w.add('results/a/y.npy', new Uint8Array([1, 2, 3]));
    await w.add('results/b/empty.bin', new Uint8Array(0));
    await w.add(`results/${longItem}/big.bin`, big);
    await w.finish();
  });
  for (const size of [1, 7, 512, 513, 4096, archive.byteLength]) {
    const entries = await readAll(archive, size);
    assert.deepEqual(
      entries.map((e) => [e.name, e.data.byteLength]),
      [
        ['results/a/y.npy', 3],
        ['results/b/empty.bin', 0],
        [`results/${longItem}/big.bin`, 5000],
      ],
      `chunks of ${size}`,
    );
    assert.deepEqual(entries[0]?.data, new Uint8Array([1, 2, 3]));
    assert.deepEqual(entries[2]?.data, big);
  }
});

test('readTar refuses a cut-short stream, a bad checksum and an oversized entry', async () => {
  const archive = await collect(async (w) => {
    await w.add('results/a/y.bin', new Uint8Array(2000).fill(1));
    await w.finish();
  });
  await assert.rejects(
    readAll(archive.subarray(0, 1000), 256),
    (e) => e instanceof TarError && /ended/.test(e.message),
  );
  const bad = archive.slice();
  bad[0] = 0x5a; // the name changes; the checksum no longer matches
  await assert.rejects(readAll(bad, 512), (e) => e instanceof TarError && /checksum|header/i.test(e.message));
  // Cut between entries (a dropped download): no end-of-archive marker.
  await assert.rejects(
    readAll(archive.subarray(0, 512 + 2048), 512),
    (e) => e instanceof TarError && /end-of-archive/.test(e.message),
  );
  await assert.rejects(
    readAll(archive, 512, 1000),
    (e) => e instanceof TarError && /out of range/.test(e.message),
  );
});
