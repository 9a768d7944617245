/**
 * Request bodies received to disk: an upload (a model, an item's file) is streamed into a temp file
 * in the hub's data dir while it is hashed (sha256) and counted, so the hub never holds its bytes.
 *
 * - A body declared larger than the limit (`Content-Length`) is refused before a byte is read; one
 *   that grows past it while streaming is cut there. Either way: 413, and no temp file stays.
 * - A body that ends early (the client went away) leaves no temp file either.
 * - What succeeds is the caller's to keep or drop: it renames the file into place (models are
 *   addressed by their sha256) or reads it, and calls `discard` in any case, which removes whatever
 *   is still at the temp path.
 *
 * The route handler reads the body through this instead of a body parser (`express.raw` buffers it
 * whole), and the connection of a refused upload is closed, so the rest of an oversized body is
 * never read. A received items body (`packItems`) is read back one item at a time (`readItems`).
 */
import { createHash, randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdir, open, rm, readdir } from 'node:fs/promises';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { join } from 'node:path';
import { PackError } from '../protocol/pack.ts';
import { HubError } from './hub.ts';

/** A body received to a temp file. */
export interface ReceivedFile {
  /** The temp file (under the dir given to `receiveToFile`). */
  path: string;
  /** sha256 of the bytes, hex. */
  sha256: string;
  bytes: number;
}

/** Temp files' names: `<random>.part`, so a dir of them is recognizably leftovers. */
const PART = '.part';

/**
 * Streams `req`'s body into a new temp file in `dir`, hashing and counting it. `what` names the
 * body in errors ("model file"). Rejects with a `HubError`: 413 past `limit` bytes, 400 for an empty
 * or unfinished body; no temp file remains after a rejection.
 */
export async function receiveToFile(
  req: IncomingMessage,
  res: ServerResponse,
  opts: { dir: string; limit: number; what: string },
): Promise<ReceivedFile> {
  const { dir, limit, what } = opts;
  const declared = Number(req.headers['content-length']);
  if (Number.isFinite(declared) && declared > limit) throw tooLarge(res, what, limit);
  await mkdir(dir, { recursive: true });
  const path = join(dir, `${randomBytes(12).toString('hex')}${PART}`);
  const hash = createHash('sha256');
  let bytes = 0;
  const outcome = await new Promise<'done' | 'over' | 'aborted' | Error>((settle) => {
    const out = createWriteStream(path, { flags: 'wx' });
    let settled = false;
    const end = (why: 'done' | 'over' | 'aborted' | Error) => {
      if (settled) return;
      settled = true;
      req.off('data', onData);
      if (why === 'done') return settle(why);
      // Stop reading, without destroying the request: a 413 must still reach the client.
      req.pause();
      out.destroy();
      // Settled once the file is closed, so removing it cannot race its creation.
      if (out.closed) settle(why);
      else out.once('close', () => settle(why));
    };
    const onData = (chunk: Buffer) => {
      bytes += chunk.byteLength;
      if (bytes > limit) return end('over');
      hash.update(chunk);
      if (!out.write(chunk)) {
        req.pause();
        out.once('drain', () => req.resume());
      }
    };
    req.on('data', onData);
    req.once('end', () => out.end());
    req.once('error', () => end('aborted'));
    req.once('close', () => {
      if (!req.complete) end('aborted');
    });
    out.once('error', (err) => end(err));
    out.once('finish', () => end('done'));
  });
  if (outcome !== 'done') {
    await rm(path, { force: true });
    if (outcome === 'over') throw tooLarge(res, what, limit);
    if (outcome === 'aborted')
      throw new HubError('aborted', `the ${what} upload ended before its body did`, 400);
    throw outcome;
  }
  if (bytes === 0) {
    await rm(path, { force: true });
    throw new HubError('invalid_request', `send the ${what} as the request body`, 400);
  }
  return { path, sha256: hash.digest('hex'), bytes };
}

/** Removes what is left at a received file's temp path (nothing, once it was renamed into place). */
export async function discard(file: ReceivedFile): Promise<void> {
  await rm(file.path, { force: true });
}

/** Removes temp files a crashed hub left in `dir` (at start, before any upload). */
export async function clearLeftovers(dir: string): Promise<void> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch {
    return;
  }
  await Promise.all(names.filter((n) => n.endsWith(PART)).map((n) => rm(join(dir, n), { force: true })));
}

/** The 413 of a body past its limit; the connection closes after it, unread. */
function tooLarge(res: ServerResponse, what: string, limit: number): HubError {
  res.setHeader('Connection', 'close');
  return new HubError('too_large', `the ${what} is larger than the limit of ${limit} bytes`, 413);
}

/** Bytes read from a received file at a time by `readItems`. */
const READ_CHUNK = 1 << 20;

/**
 * The items of a received items body (`protocol/pack.ts` `packItems`: per item, u32le name length,
 * the UTF-8 name, u32le pack length, the tensor pack), read from its temp file a chunk at a time:
 * only the item being read and one chunk are in memory, whatever the body's size. A yielded `pack`
 * is a view of the reader's buffer, valid until the next item is asked for (copy it to keep it).
 * Throws `PackError` where the body is malformed, as `unpackItems` does.
 */
export async function* readItems(
  file: ReceivedFile,
  maxNameBytes = 512,
): AsyncGenerator<{ name: string; pack: Uint8Array }> {
  const fh = await open(file.path, 'r');
  const decoder = new TextDecoder('utf-8', { fatal: false });
  let buf = Buffer.alloc(0);
  let at = 0; // next unread byte of `buf`
  let pos = 0; // next unread byte of the file
  /** The next `n` bytes, or fewer at the end of the file. */
  const take = async (n: number): Promise<Buffer> => {
    if (buf.byteLength - at < n && pos < file.bytes) {
      const have = buf.byteLength - at;
      const next = Buffer.allocUnsafe(have + Math.min(Math.max(n - have, READ_CHUNK), file.bytes - pos));
      buf.copy(next, 0, at);
      let filled = have;
      while (filled < next.byteLength) {
        const { bytesRead } = await fh.read(next, filled, next.byteLength - filled, pos);
        if (bytesRead === 0) break;
        filled += bytesRead;
        pos += bytesRead;
      }
      buf = next.subarray(0, filled);
      at = 0;
    }
    const out = buf.subarray(at, at + n);
    at += out.byteLength;
    return out;
  };
  try {
    for (let item = 0; ; item++) {
      const head = await take(4);
      if (head.byteLength === 0) return;
      if (head.byteLength < 4) throw new PackError('item stream truncated (name length)');
      const nameLength = head.readUInt32LE(0);
      if (nameLength === 0 || nameLength > maxNameBytes)
        throw new PackError(`item name length ${nameLength} out of range`);
      const nameBytes = await take(nameLength + 4);
      if (nameBytes.byteLength < nameLength + 4) throw new PackError('item stream truncated (name)');
      const name = decoder.decode(nameBytes.subarray(0, nameLength));
      const packLength = nameBytes.readUInt32LE(nameLength);
      // Bounded by what is left of the body: a forged length cannot make the reader allocate more.
      if (packLength > file.bytes - pos + (buf.byteLength - at))
        throw new PackError(`item "${name.slice(0, 80)}" runs past the end of the body`);
      yield { name, pack: await take(packLength) };
    }
  } finally {
    await fh.close();
  }
}
