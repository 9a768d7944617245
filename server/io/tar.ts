/**
 * Results archives as tar streams, on tar-stream (the tar codec of tar-fs, used across npm): the
 * hub streams `results/<item>/<output>.npy` straight into an HTTP response one entry at a time, and
 * `shardhub submit`/`jobs --download` read it as it arrives, one entry in memory at a time. Long
 * names get pax headers; only regular files are written and read.
 */
import { once } from 'node:events';
import { Readable, type Writable } from 'node:stream';
import { extract, pack, type Pack } from 'tar-stream';

/** Error thrown for names or sizes an archive here may not hold, and for broken archives. */
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
 * Checks an entry name: a non-empty relative path with forward slashes, no `..` or empty segments,
 * no NUL: nothing that could escape the folder it is extracted into.
 */
export function checkTarName(path: string): string {
  if (path === '' || path.startsWith('/') || path.includes('\\') || path.includes('\0')) {
    throw new TarError(`tar entry name "${path}" must be a non-empty relative path with forward slashes`);
  }
  if (path.split('/').some((s) => s === '..' || s === '' || s === '.')) {
    throw new TarError(`tar entry name "${path}" must not contain "..", "." or empty segments`);
  }
  return path;
}

/**
 * Writes entries to a stream as they come, respecting backpressure: each `add` resolves once the
 * stream can take more. If the stream closes early (the client went away) `add` rejects, so the
 * producer stops reading results it can no longer send.
 */
export class TarWriter {
  private state: 'open' | 'finished' = 'open';
  private readonly tar: Pack = pack();
  private failure: Error | undefined;

  constructor(private readonly out: Writable) {
    // The archive's bytes go to `out` as tar-stream makes them; `add` waits while `out` is full.
    this.tar.on('data', (chunk: unknown) => {
      if (!this.out.destroyed) this.out.write(chunk as Uint8Array);
    });
    this.tar.on('end', () => this.out.end());
    out.once('close', () => {
      if (this.state === 'open')
        this.failure ??= new TarError('tar output stream closed before the archive was complete');
    });
    out.once('error', (err: Error) => (this.failure ??= err));
  }

  /** Appends one file made of `parts` (written in order, never concatenated). */
  async add(
    name: string,
    parts: Uint8Array | readonly Uint8Array[],
    opts: TarEntryOptions = {},
  ): Promise<void> {
    if (this.state !== 'open') throw new TarError('tar archive is already finished');
    this.check();
    const list = parts instanceof Uint8Array ? [parts] : parts;
    const size = list.reduce((n, p) => n + p.byteLength, 0);
    const entry = this.tar.entry({
      name: checkTarName(name),
      size,
      mode: opts.mode ?? 0o644,
      mtime: new Date((opts.mtime ?? Date.now() / 1000) * 1000),
      type: 'file',
    });
    const written = new Promise<void>((resolve, reject) => {
      entry.once('error', reject);
      entry.once('finish', () => resolve());
    });
    for (const p of list) entry.write(p);
    entry.end(() => undefined);
    await written;
    // tar-stream hands its bytes on in later ticks: let them reach `out` before judging its room.
    await new Promise((ok) => setImmediate(ok));
    await this.room();
  }

  /** Writes the end marker and ends the stream; resolves when the stream has flushed. */
  async finish(): Promise<void> {
    if (this.state !== 'open') throw new TarError('tar archive is already finished');
    this.check();
    this.state = 'finished';
    const flushed = new Promise<void>((resolve, reject) => {
      this.out.once('finish', () => resolve());
      this.out.once('close', () => resolve());
      this.out.once('error', reject);
    });
    this.tar.finalize();
    await flushed;
  }

  private check(): void {
    if (this.failure) throw this.failure;
    if (this.out.destroyed || this.out.writableEnded) throw new TarError('tar output stream is closed');
  }

  /** Waits while the output is full, for it to drain or close. */
  private async room(): Promise<void> {
    while (this.out.writableNeedDrain) {
      this.check();
      const ac = new AbortController();
      await Promise.race([
        once(this.out, 'drain', { signal: ac.signal }),
        once(this.out, 'close', { signal: ac.signal }),
        new Promise((ok) => setTimeout(ok, 50)),
      ]).catch(() => undefined);
      ac.abort();
    }
    this.check();
  }
}

/** A file read from a tar stream. */
export interface TarEntry {
  /** Its path. */
  name: string;
  data: Uint8Array;
}

/**
 * Reads the regular files of a tar stream as they come, one entry in memory at a time (each at most
 * `maxEntryBytes`). A stream cut short, a bad header, an oversized entry or an unsafe name is a
 * `TarError`.
 */
export async function* readTar(
  chunks: AsyncIterable<Uint8Array>,
  maxEntryBytes = 256 * 1024 * 1024,
): AsyncGenerator<TarEntry> {
  const ex = extract();
  // tar-stream ends quietly when a stream stops between entries: the last 1024 bytes must be the
  // end-of-archive marker (two zero blocks), or the archive was cut short (a dropped download).
  let tail = new Uint8Array(0);
  async function* watched(): AsyncGenerator<Uint8Array> {
    for await (const c of chunks) {
      const joined = new Uint8Array(Math.min(1024, tail.byteLength + c.byteLength));
      const fromTail = Math.max(0, joined.byteLength - c.byteLength);
      joined.set(tail.subarray(tail.byteLength - fromTail), 0);
      joined.set(c.subarray(c.byteLength - (joined.byteLength - fromTail)), fromTail);
      tail = joined;
      yield c;
    }
  }
  const source = Readable.from(watched(), { objectMode: false });
  source.on('error', (err) => ex.destroy(err));
  source.pipe(ex);
  try {
    for await (const entry of ex) {
      const { name, size, type } = entry.header;
      if (type !== 'file') {
        entry.resume();
        continue;
      }
      if (size === undefined || size > maxEntryBytes) {
        entry.destroy();
        throw new TarError(`tar entry of ${size} bytes is out of range (0..${maxEntryBytes})`);
      }
      const parts: Uint8Array[] = [];
      for await (const c of entry) parts.push(c as Uint8Array);
      const data = parts.length === 1 ? (parts[0] as Uint8Array) : Buffer.concat(parts);
      yield { name: checkTarName(name), data: new Uint8Array(data.buffer, data.byteOffset, data.byteLength) };
    }
    if (tail.byteLength < 1024 || tail.some((b) => b !== 0))
      throw new TarError('tar stream ended before the end-of-archive marker');
  } catch (err) {
    if (err instanceof TarError) throw err;
    const message = (err as Error).message;
    if (/unexpected end/i.test(message))
      throw new TarError('tar stream ended before the end-of-archive marker');
    throw new TarError(`broken tar stream: ${message}`);
  } finally {
    source.destroy();
  }
}
