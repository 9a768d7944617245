/**
 * The native node's WebSocket transport: engine.io-client's own (`ws`), with a mask of zeros on
 * the frames the node sends.
 *
 * RFC 6455 has every client mask its frames with a fresh random key. The key exists for browsers:
 * a page's script chooses the bytes it sends, and without the mask it could make them look like
 * HTTP to a caching proxy on the way (RFC 6455 §10.3). A native node runs no one else's script, and
 * what it sends is what its own model computed. `ws` takes the key from a `generateMask` option, and
 * skips masking (a copy and an XOR of every byte) when the key is zeros; the receiving `ws` skips
 * unmasking then too. The node sends 400 KB per PaddleOCR item; the XOR and its copy cost about
 * 0.1 ms of its CPU per item. engine.io-client does not pass `generateMask` on, hence this subclass.
 *
 * Browsers mask as the spec has them do; this is for the native node only.
 */
import { NodeWebSocket } from 'engine.io-client';

/** Fills the masking key with zeros: `ws` then sends the payload as it is. */
function zeroMask(mask: Uint8Array): void {
  mask.fill(0);
}

/** engine.io-client's `ws` transport, sending frames with a key of zeros (see the file comment). */
export class UnmaskedWebSocket extends NodeWebSocket {
  override createSocket(
    uri: string,
    protocols: string | string[] | undefined,
    opts: Record<string, unknown>,
  ) {
    return super.createSocket(uri, protocols, { ...opts, generateMask: zeroMask });
  }
}
