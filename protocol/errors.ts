/**
 * The codes of the errors the hub sends its workers, defined once. Workers act on the code, never
 * on the message: the message is for people and may change.
 *
 * A code travels two ways: in an ack's `{ error: { code, message } }` (`events.ts` `ErrorBody`), and
 * in a refused connection's `connect_error`, whose `err.data.code` the hub's middleware sets
 * ({@link refusal}).
 */

/** Every code a worker may receive from the hub. */
export const ErrorCode = {
  /** The join token (native nodes) or the contributor token (browsers) is missing or wrong. */
  Unauthorized: 'unauthorized',
  /** The worker id is registered with another secret: another worker, or another hub's state. */
  IdentityTaken: 'identity_taken',
  /** The handshake's `auth` does not match its schema (`WorkerAuthSchema`). */
  BadHandshake: 'bad_handshake',
  /** The worker speaks a protocol version the hub does not (`PROTOCOL_VERSION` in `events.ts`). */
  Version: 'protocol_version',
  /** A payload does not match its schema: the same message will never be accepted. */
  InvalidPayload: 'invalid_payload',
  /** A message that needs a registration came before `worker:register`. */
  NotRegistered: 'not_registered',
  /** A request that must be acknowledged came without an ack callback. */
  NoAck: 'no_ack',
  /** Too many connections or messages: retry later. */
  RateLimited: 'rate_limited',
  /** The hub failed (its store, its own bug): retry later. */
  Internal: 'internal',
  /** An event the hub does not know. */
  UnknownEvent: 'unknown_event',
} as const;

/** One of {@link ErrorCode}'s values. */
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

const CODES: ReadonlySet<string> = new Set(Object.values(ErrorCode));

/** Whether a value is a known error code (a hub newer than the worker may send others). */
export function isErrorCode(value: unknown): value is ErrorCode {
  return typeof value === 'string' && CODES.has(value);
}

/** What the hub's middleware passes to `next()` to refuse a connection: Socket.IO sends `data` on. */
export interface RefusalError extends Error {
  data: { code: ErrorCode };
}

/** A connection refusal with its code (read by workers as `err.data.code`) and a message for people. */
export function refusal(code: ErrorCode, message: string): RefusalError {
  return Object.assign(new Error(`${code}: ${message}`), { data: { code } });
}

/** The code of a refused connection (`connect_error`), or undefined for a network failure. */
export function refusalCode(err: { data?: unknown }): ErrorCode | undefined {
  const code = (err.data as { code?: unknown } | undefined)?.code;
  return isErrorCode(code) ? code : undefined;
}
