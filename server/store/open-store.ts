/**
 * Picks and opens the `AsyncStore` a hub runs on, from `--store` / `SHARDHUB_STORE`: a
 * `postgres://` or `postgresql://` URL opens the PostgreSQL store (several hubs); anything else is a
 * SQLite file path, and nothing at all means `<dataDir>/hub.sqlite` (the embedded default, which
 * needs nothing installed). Failures to reach Postgres come back as one clear message, with any
 * password in the URL masked.
 */
import { join } from 'node:path';
import type { AsyncStore } from './async-store.ts';
import { PgStore } from './pg-store.ts';
import type { PgStoreOptions } from './pg-store.ts';
import { SqliteAsyncStore } from './sqlite-async-store.ts';

/** Whether `spec` names a PostgreSQL server. */
export function isPostgresUrl(spec: string): boolean {
  return /^postgres(ql)?:\/\//i.test(spec);
}

/** `spec` with the password (if any) replaced by `***`, for messages and logs. */
export function maskUrl(spec: string): string {
  try {
    const u = new URL(spec);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return spec.replace(/\/\/([^:@/]*):[^@/]*@/, '//$1:***@');
  }
}

/** Opens the store `spec` names (see the file comment). */
export async function openStore(
  spec: string | undefined,
  opts: { dataDir: string; pg?: PgStoreOptions; chunkItems?: number },
): Promise<AsyncStore> {
  const chosen = spec?.trim() || join(opts.dataDir, 'hub.sqlite');
  if (!isPostgresUrl(chosen)) return SqliteAsyncStore.open(chosen, { chunkItems: opts.chunkItems });
  try {
    return await PgStore.open(chosen, { chunkItems: opts.chunkItems, ...opts.pg });
  } catch (err) {
    const e = err as { code?: string; message?: string };
    const why =
      e.message && (!e.code || e.message.includes(e.code))
        ? e.message
        : [e.code, e.message].filter(Boolean).join(' ');
    throw new Error(`cannot open the PostgreSQL store at ${maskUrl(chosen)}: ${why}`, { cause: err });
  }
}
