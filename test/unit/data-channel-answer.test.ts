/**
 * The node reads the hub's answer to its data channel upgrade as HTTP, not byte for byte: a proxy
 * (HAProxy with `h1-case-adjust`) may change the headers' case and order and add its own.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  acceptsDataChannel,
  DATA_CHANNEL_ACCEPT,
  DATA_CHANNEL_PROTOCOL,
  parseAnswerHead,
} from '../../protocol/data-channel.ts';

/** The head of an answer (the text before its blank line). */
const head = (text: string) => parseAnswerHead(text.split('\r\n\r\n')[0] as string);

describe('the data channel upgrade answer', () => {
  it("accepts the hub's own answer", () => {
    const h = head(DATA_CHANNEL_ACCEPT);
    assert.ok(h);
    assert.equal(h.status, 101);
    assert.equal(h.reason, 'Switching Protocols');
    assert.ok(acceptsDataChannel(h));
  });

  it('accepts headers in any case and order, with extra headers, folded lines and bare newlines', () => {
    for (const text of [
      `HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: ${DATA_CHANNEL_PROTOCOL}`,
      `http/1.1 101 Switching Protocols\r\nDate: Sun, 06 Dec 2026 17:00:00 GMT\r\nCONNECTION: Upgrade\r\nX-Proxy: haproxy\r\nUPGRADE: ${DATA_CHANNEL_PROTOCOL.toUpperCase()}`,
      `HTTP/1.0 101\nUpgrade:${DATA_CHANNEL_PROTOCOL}\nConnection: keep-alive,\n Upgrade`,
      `HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nUpgrade: ${DATA_CHANNEL_PROTOCOL}\r\nConnection: Upgrade\r\nnot a header line`,
    ]) {
      const h = parseAnswerHead(text);
      assert.ok(h, text);
      assert.ok(acceptsDataChannel(h), text);
    }
  });

  it('refuses what is not an upgrade to the data channel', () => {
    for (const text of [
      'HTTP/1.1 200 OK\r\nUpgrade: shardhub-data/1\r\nConnection: Upgrade',
      'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade',
      `HTTP/1.1 101 Switching Protocols\r\nUpgrade: ${DATA_CHANNEL_PROTOCOL}\r\nConnection: close`,
      `HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade`,
    ]) {
      const h = parseAnswerHead(text);
      assert.ok(h, text);
      assert.equal(acceptsDataChannel(h), false, text);
    }
  });

  it('reads status and reason of a refusal, and nothing from what is not HTTP/1.x', () => {
    const h = parseAnswerHead('HTTP/1.1 401 Unauthorized\r\nContent-Type: text/plain');
    assert.equal(h?.status, 401);
    assert.equal(h?.reason, 'Unauthorized');
    assert.equal(h?.headers.get('content-type'), 'text/plain');
    assert.equal(parseAnswerHead('SSH-2.0-OpenSSH_9.6'), undefined);
    assert.equal(parseAnswerHead('HTTP/2 101'), undefined);
    assert.equal(parseAnswerHead(''), undefined);
  });
});
