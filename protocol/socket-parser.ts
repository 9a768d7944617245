/**
 * Socket.IO's own wire format with a higher limit on binary attachments per packet.
 *
 * socket.io-parser 4.2.7's decoder refuses a packet with more than 10 binary attachments (a
 * "parse error" that drops the connection), and every tensor is one attachment: a `shard:assign`
 * of 11 single-input items, or an `items:done` of 11 results, would disconnect its receiver. The
 * encoding is unchanged, so this parser interoperates with the stock one; only the receiver's limit
 * differs. Pass it as the `parser` option on both sides: `io(url, { parser: shardhubParser })` and
 * `new Server(http, { parser: shardhubParser })`.
 */
import { Decoder as BaseDecoder, Encoder, protocol } from 'socket.io-parser';

/**
 * Attachments a receiver using {@link shardhubParser} accepts in one packet. Bytes stay bounded by
 * the transport's buffer limit (`LIMITS.socketMessageBytes` on the hub); this bounds only the count.
 */
export const MAX_ATTACHMENTS = 16_384;

/** Attachments a stock Socket.IO receiver accepts in one packet (socket.io-parser's default). */
export const STOCK_MAX_ATTACHMENTS = 10;

class Decoder extends BaseDecoder {
  constructor() {
    super({ maxAttachments: MAX_ATTACHMENTS });
  }
}

/** The Socket.IO parser with {@link MAX_ATTACHMENTS}; see the file comment. */
export const shardhubParser = { protocol, Encoder, Decoder };
