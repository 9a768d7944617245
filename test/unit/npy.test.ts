import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { npyByteLength, npyHeader, NpyError, readNpy, writeNpy } from '../../server/io/npy.ts';
import {
  bytesOf,
  DTYPES,
  DTYPE_BYTES,
  toNumbers,
  type DType,
  type WireTensor,
} from '../../protocol/tensor.ts';

/** Bytes exactly as numpy 2.4 `np.save` wrote them (checked with python3 while writing this test). */
function numpyFixture(descr: string, shape: string, dataHex: string): Uint8Array {
  const dict = `{'descr': '${descr}', 'fortran_order': False, 'shape': ${shape}, }`;
  const header = dict.padEnd(117, ' ') + '\n'; // 10 + 118 = 128 bytes before the data
  const data = Buffer.from(dataHex, 'hex');
  return new Uint8Array(
    Buffer.concat([
      Buffer.from([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 1, 0, 0x76, 0]),
      Buffer.from(header, 'latin1'),
      data,
    ]),
  );
}

function sample(dtype: DType, dims: number[]): WireTensor {
  const n = dims.reduce((a, b) => a * b, 1);
  const data = new Uint8Array(n * DTYPE_BYTES[dtype]);
  for (let i = 0; i < data.length; i++) data[i] = (i * 37 + 11) & 0xff;
  if (dtype === 'bool') data.forEach((_, i) => (data[i] = i % 3 === 0 ? 1 : 0));
  return { name: 'x', dtype, dims, data };
}

test('every dtype round-trips through .npy with dims and bytes intact', () => {
  for (const dtype of DTYPES) {
    for (const dims of [[], [5], [2, 3], [1, 3, 4, 2], [0, 4]]) {
      const t = sample(dtype, dims);
      const file = writeNpy(t);
      assert.equal(file.byteLength, npyByteLength(t));
      assert.equal((file.byteLength - t.data.byteLength) % 64, 0, 'data starts on a 64-byte boundary');
      const back = readNpy(file, 'renamed');
      assert.equal(back.name, 'renamed');
      assert.equal(back.dtype, dtype);
      assert.deepEqual(back.dims, dims);
      assert.deepEqual(back.data, t.data, `${dtype} [${dims}]`);
    }
  }
});

test('reads headers written by numpy and writes the same bytes numpy does', () => {
  const f4 = numpyFixture('<f4', '(2, 3)', '000000000000803f0000004000004040000080400000a040');
  const t = readNpy(f4, 'x');
  assert.equal(t.dtype, 'float32');
  assert.deepEqual(t.dims, [2, 3]);
  assert.deepEqual([...toNumbers(t)], [0, 1, 2, 3, 4, 5]);
  assert.deepEqual(writeNpy(t), f4, 'our writer matches np.save byte for byte');

  const i8File = numpyFixture('<i8', '(3,)', '0100000000000000feffffffffffffff0300000000000000');
  const i8 = readNpy(i8File, 'x');
  assert.equal(i8.dtype, 'int64');
  assert.deepEqual([...toNumbers(i8)], [1, -2, 3]);
  assert.deepEqual(writeNpy(i8), i8File, '1-D shapes are written as (3,)');

  const b1File = numpyFixture('|b1', '()', '01');
  const b1 = readNpy(b1File, 'x');
  assert.deepEqual(writeNpy(b1), b1File, 'scalars are written as ()');
  assert.equal(b1.dtype, 'bool');
  assert.deepEqual(b1.dims, []);
  assert.deepEqual([...b1.data], [1]);

  const f2 = readNpy(numpyFixture('<f2', '(1, 2)', '003c0040'), 'x');
  assert.equal(f2.dtype, 'float16');
  assert.deepEqual([...toNumbers(f2)], [1, 2]);
});

test('reads version 2.0 headers', () => {
  const v1 = writeNpy({ dtype: 'int32', dims: [2], data: bytesOf(new Int32Array([7, -8])) });
  const headerLen = v1[8]! | (v1[9]! << 8);
  const v2 = new Uint8Array(v1.byteLength + 2);
  v2.set(v1.subarray(0, 6));
  v2[6] = 2;
  new DataView(v2.buffer).setUint32(8, headerLen, true);
  v2.set(v1.subarray(10), 12);
  const t = readNpy(v2, 'x');
  assert.deepEqual([...toNumbers(t)], [7, -8]);
});

test('bad files are rejected with a reason', () => {
  const good = writeNpy({ dtype: 'float32', dims: [2, 2], data: new Uint8Array(16) });
  const withHeader = (dict: string, data = new Uint8Array(16)) => {
    const h = dict.padEnd(117, ' ') + '\n';
    return new Uint8Array(
      Buffer.concat([
        Buffer.from([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 1, 0, 0x76, 0]),
        Buffer.from(h, 'latin1'),
        data,
      ]),
    );
  };
  const cases: [string, Uint8Array, RegExp][] = [
    ['magic', new TextEncoder().encode('PK\x03\x04 not numpy at all'), /bad magic/],
    ['truncated data', good.subarray(0, good.byteLength - 1), /needs 16/],
    ['trailing data', new Uint8Array([...good, 0]), /data is 17 bytes/],
    ['fortran', withHeader("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }"), /Fortran order/],
    [
      'big endian',
      withHeader("{'descr': '>f4', 'fortran_order': False, 'shape': (2, 2), }"),
      /not little-endian/,
    ],
    [
      'unsupported dtype',
      withHeader("{'descr': '<c8', 'fortran_order': False, 'shape': (2, 1), }"),
      /'<c8' is not supported/,
    ],
    [
      'structured',
      withHeader("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (4,), }"),
      /structured/,
    ],
    [
      'missing key',
      withHeader("{'descr': '<f4', 'shape': (2, 2), }"),
      /expected descr, fortran_order, shape/,
    ],
    [
      'garbage',
      withHeader("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), } junk"),
      /unexpected text/,
    ],
    ['unterminated', withHeader("{'descr': '<f4"), /unterminated string/],
    ['deep nesting', withHeader(`{'descr': ${'('.repeat(50)}`), /nested too deeply/],
    ['version', new Uint8Array([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 9, 0, 0, 0, 0, 0]), /version 9\.0/],
  ];
  for (const [what, bytes, re] of cases) {
    assert.throws(
      () => readNpy(bytes, 'x'),
      (err: Error) => err instanceof NpyError && re.test(err.message),
      what,
    );
  }
  // A header longer than 64 KiB is refused before it is decoded.
  const huge = new Uint8Array(12 + 70_000);
  huge.set([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 2, 0]);
  new DataView(huge.buffer).setUint32(8, 70_000, true);
  assert.throws(() => readNpy(huge, 'x'), /exceeds 65536/);
});

test('npyHeader is padded to 64 bytes and ends in a newline', () => {
  const h = npyHeader('uint8', [3, 4, 5]);
  assert.equal(h.byteLength % 64, 0);
  assert.equal(h[h.byteLength - 1], 0x0a);
  assert.match(
    new TextDecoder().decode(h.subarray(10)),
    /^\{'descr': '\|u1', 'fortran_order': False, 'shape': \(3, 4, 5\), \} +\n$/,
  );
});

test('numpy itself reads what we write (when python3 with numpy is available)', async (t) => {
  const probe = spawnSync('python3', ['-c', 'import numpy'], { encoding: 'utf8' });
  if (probe.status !== 0) {
    t.skip('python3 with numpy not available');
    return;
  }
  const dir = await mkdtemp(join(tmpdir(), 'shardhub-npy-'));
  try {
    const x = {
      name: 'x',
      dtype: 'float32' as const,
      dims: [2, 2],
      data: bytesOf(new Float32Array([1.5, -2, 3, 4.25])),
    };
    await writeFile(join(dir, 'x.npy'), writeNpy(x));
    const r = spawnSync(
      'python3',
      [
        '-c',
        `import numpy as np; a = np.load(${JSON.stringify(join(dir, 'x.npy'))}); print(a.dtype, a.shape, a.tolist()); np.save(${JSON.stringify(join(dir, 'y.npy'))}, (a * 2).astype('<i8'))`,
      ],
      { encoding: 'utf8' },
    );
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout.trim(), 'float32 (2, 2) [[1.5, -2.0], [3.0, 4.25]]');
    const y = readNpy(new Uint8Array(await readFile(join(dir, 'y.npy'))), 'y');
    assert.equal(y.dtype, 'int64');
    assert.deepEqual([...toNumbers(y)], [3, -4, 6, 8]);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
