/**
 * The data channel: a native node's second connection to the hub, which carries the inputs of
 * large items (a shard's items of at least 64 KB each) from the hub to the node, one way. Everything
 * else, results included, stays on Socket.IO.
 *
 * Why: on Socket.IO, a 1.2 MB input reaches the node as 19 socket reads of 64 KB, each a fresh
 * buffer and a stream callback, which `ws` then copies into one frame, which the node then copies
 * into the batch buffer it runs from. Here the node tells the kernel where each tensor's bytes go
 * (`net.Socket`'s `onread` buffer) and they land in that batch buffer directly: no copy in user
 * space and no allocation per read.
 *
 * - Opening: the hub's `worker:register` reply to a native node that asked (`dataChannel: true`)
 *   holds a ticket: single use, bound to that worker's Socket.IO connection, valid for
 *   {@link DATA_TICKET_TTL_MS}. The node connects to the hub's own port and sends
 *   `GET /worker-data` with `Upgrade: shardhub-data/1` and `Authorization: Bearer <ticket>`; the hub
 *   answers {@link DATA_CHANNEL_ACCEPT}, or an HTTP error with a one-line reason and closes. The node
 *   reads the answer as HTTP, not byte for byte ({@link parseAnswerHead}): a proxy between them
 *   (HAProxy's `h1-case-adjust`, `deploy/haproxy.cfg`) may change the headers' case and order and
 *   add headers of its own.
 * - Frames, hub to node only: u32le header length, UTF-8 JSON {@link FrameHeader}, then every item's
 *   tensors' bytes in header order. The node sends nothing after its request.
 * - The channel lives as long as the worker's Socket.IO connection. If either ends, the other is
 *   closed too, and the hub requeues the worker's items as for any disconnect: a frame cut off
 *   half-way is never half-used.
 * - Plain `http:` hubs only: Node cannot read a TLS socket into buffers of the caller's choosing.
 *   A node of an `https:` hub does not ask, and gets its inputs over Socket.IO as before.
 */
import { z } from 'zod';
import { LIMITS } from './limits.ts';
import type { ModelInfo } from './model.ts';
import { DimsSchema } from './schemas.ts';
import { byteLengthOf, DTYPES, type DType } from './tensor.ts';

/** The HTTP path the node's upgrade request goes to. */
export const DATA_CHANNEL_PATH = '/worker-data';
/** The `Upgrade` protocol token. */
export const DATA_CHANNEL_PROTOCOL = 'shardhub-data/1';
/** The hub's answer to an accepted upgrade. */
export const DATA_CHANNEL_ACCEPT = `HTTP/1.1 101 Switching Protocols\r\nUpgrade: ${DATA_CHANNEL_PROTOCOL}\r\nConnection: Upgrade\r\n\r\n`;
/** How long a ticket from a register reply stays valid. */
export const DATA_TICKET_TTL_MS = 30_000;
/** Largest frame header. */
export const MAX_FRAME_HEADER_BYTES = 1024 * 1024;
/** Largest frame: the same bound as a Socket.IO message. */
export const MAX_FRAME_BYTES = LIMITS.socketMessageBytes;

/** One tensor in a frame header: name, dtype, dims (its bytes follow the header, in order). */
export interface FrameTensor {
  n: string;
  t: DType;
  d: number[];
}

/** A frame's header: a `shard:assign` whose items' tensors come after it as raw bytes. */
export interface FrameHeader {
  shardId: string;
  jobId: string;
  model: ModelInfo;
  /** Each item's tensors, or why the hub could not read its inputs (no bytes follow for it). */
  items: { id: number; tensors?: FrameTensor[]; error?: string }[];
}

const FrameHeaderSchema = z.object({
  shardId: z.string().min(1).max(LIMITS.nameChars),
  jobId: z.string().min(1).max(LIMITS.nameChars),
  model: z
    .object({
      sha256: z.string().regex(/^[0-9a-f]{64}$/),
      batchable: z.boolean(),
      batchSize: z.number().int().min(1),
    })
    .passthrough(),
  items: z
    .array(
      z.object({
        id: z.number().int().min(1),
        tensors: z
          .array(
            z.object({
              n: z.string().min(1).max(LIMITS.nameChars),
              t: z.enum(DTYPES),
              d: DimsSchema,
            }),
          )
          .max(LIMITS.tensorsPerItem)
          .optional(),
        error: z.string().max(LIMITS.textChars).optional(),
      }),
    )
    .min(1)
    .max(LIMITS.itemsPerMessage),
});

const decoder = new TextDecoder();
const encoder = new TextEncoder();

/** A malformed frame or a refused channel. */
export class DataChannelError extends Error {
  override name = 'DataChannelError';
}

/**
 * Parses and checks a frame header: its shape, and that no tensor is over `LIMITS.tensorBytes` and
 * the frame's bytes are within {@link MAX_FRAME_BYTES}. Throws a {@link DataChannelError}.
 */
export function parseFrameHeader(bytes: Uint8Array): FrameHeader {
  let json: unknown;
  try {
    json = JSON.parse(decoder.decode(bytes));
  } catch {
    throw new DataChannelError('frame header is not JSON');
  }
  const r = FrameHeaderSchema.safeParse(json);
  if (!r.success) {
    const issue = r.error.issues[0];
    throw new DataChannelError(
      `frame header: ${issue?.path.join('.') ?? ''}: ${issue?.message ?? 'invalid'}`,
    );
  }
  const header = r.data as unknown as FrameHeader;
  let total = 0;
  for (const item of header.items) {
    for (const t of item.tensors ?? []) {
      const n = byteLengthOf(t.t, t.d);
      if (n > LIMITS.tensorBytes) throw new DataChannelError(`item ${item.id}: tensor "${t.n}" is too large`);
      total += n;
    }
  }
  if (total > MAX_FRAME_BYTES) throw new DataChannelError(`frame of ${total} bytes is over the limit`);
  return header;
}

/** Serializes a frame header with its length prefix. */
export function encodeFrameHeader(header: FrameHeader): Uint8Array {
  const json = encoder.encode(JSON.stringify(header));
  const out = new Uint8Array(4 + json.byteLength);
  new DataView(out.buffer).setUint32(0, json.byteLength, true);
  out.set(json, 4);
  return out;
}

/** Most bytes of an upgrade answer's head (status line and headers) a node reads. */
export const MAX_ANSWER_HEAD_BYTES = 16 * 1024;

/** The head of an HTTP/1.x answer: status, reason phrase, headers by lower-case name. */
export interface AnswerHead {
  status: number;
  reason: string;
  /** Each header's value; a header sent more than once has its values joined by `, `. */
  headers: Map<string, string>;
}

/**
 * Parses the head of an HTTP/1.x answer (the text before its blank line), leniently as RFC 9112
 * asks of a recipient: header names in any case, headers in any order, bare `\n` line ends, folded
 * lines joined, lines that are not headers skipped. Undefined when the status line is not HTTP/1.x.
 */
export function parseAnswerHead(text: string): AnswerHead | undefined {
  const lines = text.split(/\r?\n/);
  const status = /^HTTP\/1\.[01][ \t]+(\d{3})(?:[ \t]+(.*))?$/i.exec(lines[0] ?? '');
  if (!status) return undefined;
  const headers = new Map<string, string>();
  let last: string | undefined;
  for (const line of lines.slice(1)) {
    if (/^[ \t]/.test(line) && last !== undefined) {
      headers.set(last, `${headers.get(last) ?? ''} ${line.trim()}`.trim());
      continue;
    }
    const m = /^([!#$%&'*+.^_`|~0-9A-Za-z-]+)[ \t]*:[ \t]*(.*?)[ \t]*$/.exec(line);
    if (!m) {
      last = undefined;
      continue;
    }
    last = (m[1] as string).toLowerCase();
    const prev = headers.get(last);
    headers.set(last, prev === undefined ? (m[2] as string) : `${prev}, ${m[2] as string}`);
  }
  return { status: Number(status[1]), reason: (status[2] ?? '').trim(), headers };
}

/**
 * Whether an answer accepts the data channel: status 101, `Upgrade` naming
 * {@link DATA_CHANNEL_PROTOCOL} and `Connection` holding `upgrade`, each compared without regard to
 * case (protocol names and connection options are case-insensitive tokens).
 */
export function acceptsDataChannel(head: AnswerHead): boolean {
  const tokens = (name: string) =>
    (head.headers.get(name) ?? '')
      .split(',')
      .map((t) => t.trim().toLowerCase())
      .filter(Boolean);
  return (
    head.status === 101 &&
    tokens('upgrade').includes(DATA_CHANNEL_PROTOCOL.toLowerCase()) &&
    tokens('connection').includes('upgrade')
  );
}
