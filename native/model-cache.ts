/** A native node's model cache on disk. */
import { randomBytes } from 'node:crypto';
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { ModelStore } from '../worker/model-cache.ts';

const SHA256 = /^[0-9a-f]{64}$/;

/**
 * Model bytes on disk, one file per model named by its sha256. Reads are verified by `fetchModel`
 * (a corrupt file is refetched and overwritten); writes go through a temp file and a rename, so a
 * crash never leaves a half-written model under its final name.
 */
export class DiskModelStore implements ModelStore {
  constructor(readonly dir: string) {}

  async get(sha256: string): Promise<Uint8Array | undefined> {
    if (!SHA256.test(sha256)) return undefined;
    try {
      const buf = await readFile(join(this.dir, sha256));
      return new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
  }

  async put(sha256: string, bytes: Uint8Array): Promise<void> {
    if (!SHA256.test(sha256)) throw new Error('model cache keys are lower-case sha256 hex');
    await mkdir(this.dir, { recursive: true });
    const tmp = join(this.dir, `${sha256}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
    await writeFile(tmp, bytes);
    await rename(tmp, join(this.dir, sha256));
  }
}
