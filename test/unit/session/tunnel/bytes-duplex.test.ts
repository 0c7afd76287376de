import { PassThrough } from 'node:stream';
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { bytesDuplex, type BytesMessageStream } from '../../../../src/session/tunnel/bytes-duplex.js';

/** An object stream standing in for grpc-js's Control.Session call: BytesMessage-shaped objects. */
function messageStream(): BytesMessageStream {
  return new PassThrough({ objectMode: true }) as unknown as BytesMessageStream;
}

describe('bytesDuplex', () => {
  it('delivers small and large messages in order, small ones gathered into fewer chunks, then the end', async () => {
    const src = messageStream();
    const d = bytesDuplex(src);
    const sent: Buffer[] = [];
    // A listing's worth of tiny messages, a large one in the middle, more tiny ones, another large one.
    for (let i = 0; i < 500; i++) sent.push(Buffer.from(`stat ${i};`));
    sent.push(randomBytes(40_000));
    for (let i = 0; i < 300; i++) sent.push(Buffer.from(`more ${i};`));
    sent.push(randomBytes(20_000));
    sent.push(Buffer.from('tail'));
    const chunks: Buffer[] = [];
    const done = new Promise<void>((resolve, reject) => {
      d.on('data', (c: Buffer) => chunks.push(c));
      d.on('end', resolve);
      d.on('error', reject);
    });
    for (const b of sent) src.write({ data: b });
    src.end();
    await done;
    expect(Buffer.concat(chunks).equals(Buffer.concat(sent))).toBe(true);
    expect(chunks.length).toBeLessThan(sent.length / 10);
    // Large messages are passed through whole.
    expect(chunks.some((c) => c.length === 40_000 && c.equals(sent[500]!))).toBe(true);
  });

  it('empty messages carry nothing and a lone small message still arrives', async () => {
    const src = messageStream();
    const d = bytesDuplex(src);
    const got: Buffer[] = [];
    d.on('data', (c: Buffer) => got.push(c));
    src.write({ data: new Uint8Array(0) });
    src.write({ data: Buffer.from('ping') });
    await new Promise((r) => setTimeout(r, 20));
    expect(Buffer.concat(got).toString()).toBe('ping');
  });
});
