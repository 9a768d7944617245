/**
 * The hub's two secrets: the operator token (REST API, dashboard actions) and the join token
 * (native nodes). Taken from config/env when given, else generated on first start and kept in the
 * data dir with mode 0600. Compared in constant time; never logged.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export interface Tokens {
  operatorToken: string;
  joinToken: string;
}

/** Loads or creates the tokens file `<dataDir>/tokens.json`; explicit values win. */
export function loadTokens(dataDir: string, explicit: Partial<Tokens>): Tokens & { generated: boolean } {
  mkdirSync(dataDir, { recursive: true });
  const file = join(dataDir, 'tokens.json');
  let stored: Partial<Tokens> = {};
  if (existsSync(file)) stored = JSON.parse(readFileSync(file, 'utf8')) as Partial<Tokens>;
  const tokens: Tokens = {
    operatorToken: explicit.operatorToken ?? stored.operatorToken ?? newToken('op'),
    joinToken: explicit.joinToken ?? stored.joinToken ?? newToken('join'),
  };
  const generated = !stored.operatorToken || !stored.joinToken;
  if (generated) {
    writeFileSync(
      file,
      JSON.stringify(
        {
          operatorToken: stored.operatorToken ?? tokens.operatorToken,
          joinToken: stored.joinToken ?? tokens.joinToken,
        },
        null,
        2,
      ),
      { mode: 0o600 },
    );
  }
  return { ...tokens, generated };
}

/** A fresh random token with a readable prefix. */
export function newToken(prefix: string): string {
  return `${prefix}_${randomBytes(24).toString('base64url')}`;
}

/** Constant-time comparison of a presented token with the expected one. */
export function tokenMatches(presented: unknown, expected: string): boolean {
  if (typeof presented !== 'string') return false;
  // Hash both so lengths match and timingSafeEqual never throws or leaks length.
  const a = createHash('sha256').update(presented).digest();
  const b = createHash('sha256').update(expected).digest();
  return timingSafeEqual(a, b);
}

/** Hash of a worker's secret, as kept in the store. */
export function hashSecret(secret: string): string {
  return createHash('sha256').update(`shardhub-worker:${secret}`).digest('hex');
}

/** Reads a bearer token from an Authorization header. */
export function bearer(header: string | undefined): string | undefined {
  if (!header) return undefined;
  const m = /^Bearer\s+(\S+)$/i.exec(header);
  return m?.[1];
}
