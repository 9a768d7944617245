/**
 * A minimal streaming ustar (POSIX.1-1988) writer: enough for the hub to stream a results archive
 * (`results/<item>/<output>.npy`) straight into an HTTP response, one entry at a time, without
 * holding the archive in memory. Regular files only; sizes up to 8 GiB (11 octal digits).
 */
import type { Writable } from 'node:stream';

/** Size of a tar block. */
export const TAR_BLOCK = 512;
/** Largest entry size a ustar header can express. */
export const TAR_MAX_SIZE = 8 ** 11 - 1;

const encoder = new TextEncoder();

/** Error thrown for names or sizes a ustar archive cannot hold. */
export class TarError extends Error {
  override name = 'TarError';
}

/** Options of one entry. */
export interface TarEntryOptions {
  /** Modification time in seconds since the epoch (default: now). */
  mtime?: number;
  /** Permission bits (default 0o644). */
  mode?: number;
}

/**
 * Splits a path into ustar's `prefix` (≤155 bytes) and `name` (≤100 bytes) at a `/`.
 * Rejects names that could escape the extraction directory (absolute, `..`, backslashes, NUL).
 */
export function splitTarName(path: string): { prefix: string; name: string } {
  if (path === '' || path.startsWith('/') || path.includes('\\') || path.includes('\0')) {
    throw new TarError(`tar entry name "${path}" must be a non-empty relative path with forward slashes`);
  }
  if (path.split('/').some((s) => s === '..' || s === '')) {
    throw new TarError(`tar entry name "${path}" must not contain ".." or empty segments`);
  }
  const len = (s: string) => encoder.encode(s).byteLength;
  if (len(path) <= 100) return { prefix: '', name: path };
  // Try every slash from the right: the name part as short as it must be, the prefix as long as it may be.
  for (let i = path.lastIndexOf('/'); i > 0; i = path.lastIndexOf('/', i - 1)) {
    const prefix = path.slice(0, i);
    const name = path.slice(i + 1);
    if (len(name) > 100) break;
    if (len(prefix) <= 155) return { prefix, name };
  }
  throw new TarError(
    `tar entry name "${path}" is too long for ustar (name ≤100 bytes, directory ≤155 bytes)`,
  );
}

/** The 512-byte ustar header of a regular file `name` holding `size` bytes. */
export function tarEntryHeader(name: string, size: number, opts: TarEntryOptions = {}): Uint8Array {
  if (!Number.isSafeInteger(size) || size < 0 || size > TAR_MAX_SIZE) {
    throw new TarError(`tar entry size ${size} is out of range (0..${TAR_MAX_SIZE})`);
  }
  const { prefix, name: short } = splitTarName(name);
  const h = new Uint8Array(TAR_BLOCK);
  const str = (off: number, len: number, s: string) => {
    const b = encoder.encode(s);
    h.set(b.subarray(0, len), off);
  };
  // Numeric fields: zero-padded octal, NUL-terminated, filling the field.
  const oct = (off: number, len: number, n: number) =>
    str(off, len, `${n.toString(8).padStart(len - 1, '0')}\0`);
  str(0, 100, short);
  oct(100, 8, opts.mode ?? 0o644);
  oct(108, 8, 0); // uid
  oct(116, 8, 0); // gid
  oct(124, 12, size);
  oct(136, 12, Math.max(0, Math.floor(opts.mtime ?? Date.now() / 1000)));
  h.fill(0x20, 148, 156); // checksum counts as spaces while it is computed
  h[156] = 0x30; // typeflag '0': regular file
  str(257, 6, 'ustar\0');
  str(263, 2, '00');
  str(345, 155, prefix);
  let sum = 0;
  for (const b of h) sum += b;
  str(148, 8, `${sum.toString(8).padStart(6, '0')}\0 `);
  return h;
}

/** Zero bytes that pad an entry of `size` bytes to a whole block. */
export function tarPadding(size: number): Uint8Array {
  return new Uint8Array((TAR_BLOCK - (size % TAR_BLOCK)) % TAR_BLOCK);
}

/** The end-of-archive marker: two zero blocks. */
export function tarEnd(): Uint8Array {
  return new Uint8Array(2 * TAR_BLOCK);
}

/**
 * Writes entries to a stream as they come, respecting backpressure: each `add` resolves once the
 * stream can take more. If the stream closes early (the client went away) `add` rejects, so the
 * producer stops reading results it can no longer send.
 */
export class TarWriter {
  private state: 'open' | 'finished' = 'open';

  constructor(private readonly out: Writable) {}

  /** Appends one file made of `parts` (written in order, never concatenated). */
  async add(name: string, parts: Uint8Array | readonly Uint8Array[], opts?: TarEntryOptions): Promise<void> {
    if (this.state !== 'open') throw new TarError('tar archive is already finished');
    const list = parts instanceof Uint8Array ? [parts] : parts;
    const size = list.reduce((n, p) => n + p.byteLength, 0);
    await this.write(tarEntryHeader(name, size, opts));
    for (const p of list) await this.write(p);
    const pad = tarPadding(size);
    if (pad.byteLength) await this.write(pad);
  }

  /** Writes the end marker and ends the stream; resolves when the stream has flushed. */
  async finish(): Promise<void> {
    if (this.state !== 'open') throw new TarError('tar archive is already finished');
    this.state = 'finished';
    await this.write(tarEnd());
    await new Promise<void>((resolve, reject) => {
      this.out.once('error', reject);
      this.out.end(() => resolve());
    });
  }

  private write(chunk: Uint8Array): Promise<void> {
    const out = this.out;
    if (out.destroyed || out.writableEnded)
      return Promise.reject(new TarError('tar output stream is closed'));
    if (out.write(chunk)) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      const done = (err?: Error) => {
        out.off('drain', onDrain);
        out.off('close', onClose);
        out.off('error', onError);
        if (err) reject(err);
        else resolve();
      };
      const onDrain = () => done();
      const onClose = () => done(new TarError('tar output stream closed before the archive was complete'));
      const onError = (err: Error) => done(err);
      out.on('drain', onDrain);
      out.on('close', onClose);
      out.on('error', onError);
    });
  }
}

/** A file read from a tar stream. */
export interface TarEntry {
  /** Its path (the ustar prefix and name joined). */
  name: string;
  data: Uint8Array;
}

/**
 * Reads the regular files of a ustar stream as they come, one entry in memory at a time (each at
 * most `maxEntryBytes`); checksums are verified. Ends at the end-of-archive marker; a stream that
 * ends before it, a bad checksum or an oversized entry is a `TarError`.
 */
export async function* readTar(
  chunks: AsyncIterable<Uint8Array>,
  maxEntryBytes = 256 * 1024 * 1024,
): AsyncGenerator<TarEntry> {
  const it = chunks[Symbol.asyncIterator]();
  // Bytes read and not yet used, as the chunks came (joined only when taken).
  let pending: Uint8Array[] = [];
  let have = 0;
  const take = async (n: number): Promise<Uint8Array> => {
    while (have < n) {
      const next = await it.next();
      if (next.done) throw new TarError('tar stream ended before the end-of-archive marker');
      pending.push(next.value);
      have += next.value.byteLength;
    }
    const out = new Uint8Array(n);
    let off = 0;
    while (off < n) {
      const c = pending[0] as Uint8Array;
      const k = Math.min(n - off, c.byteLength);
      out.set(c.subarray(0, k), off);
      off += k;
      if (k === c.byteLength) pending.shift();
      else pending[0] = c.subarray(k);
    }
    have -= n;
    if (pending.length === 0) pending = [];
    return out;
  };
  const text = (h: Uint8Array, off: number, len: number) =>
    new TextDecoder().decode(h.subarray(off, off + len)).replace(/\0.*$/s, '');
  for (;;) {
    const h = await take(TAR_BLOCK);
    if (h.every((b) => b === 0)) return; // end of archive
    let sum = 0;
    for (let i = 0; i < TAR_BLOCK; i++) sum += i >= 148 && i < 156 ? 0x20 : (h[i] as number);
    if (parseInt(text(h, 148, 8).trim(), 8) !== sum) throw new TarError('tar header checksum mismatch');
    const size = parseInt(text(h, 124, 12).trim() || '0', 8);
    if (!Number.isSafeInteger(size) || size < 0 || size > maxEntryBytes) {
      throw new TarError(`tar entry of ${size} bytes is out of range (0..${maxEntryBytes})`);
    }
    const prefix = text(h, 345, 155);
    const name = prefix ? `${prefix}/${text(h, 0, 100)}` : text(h, 0, 100);
    const data = (await take(size + tarPadding(size).byteLength)).subarray(0, size);
    const type = String.fromCharCode(h[156] as number);
    if (type === '0' || type === '\0') yield { name, data };
  }
}
