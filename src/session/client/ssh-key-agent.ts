import { createPrivateKey, createPublicKey, sign, type KeyObject } from 'node:crypto';
import { open } from 'node:fs/promises';
import { InvalidArgumentError } from '../../util/errors.js';

/**
 * A read-only SSH agent over private key files, for `--ssh id=keyfile`: it lists the keys and
 * signs with them; adding, removing, locking and extensions are refused (SSH_AGENT_FAILURE), as
 * upstream's read-only agent refuses them. Protocol: draft-miller-ssh-agent.
 */

const REQUEST_IDENTITIES = 11;
const IDENTITIES_ANSWER = 12;
const SIGN_REQUEST = 13;
const SIGN_RESPONSE = 14;
const FAILURE = 5;
const RSA_SHA2_256 = 2;
const RSA_SHA2_512 = 4;

export interface AgentKey {
  /** Wire form of the public key (`string type, ...`). */
  blob: Buffer;
  type: 'ssh-ed25519' | 'ssh-rsa' | `ecdsa-sha2-nistp${256 | 384 | 521}`;
  key: KeyObject;
  comment: string;
}

/** Reads a private key file (OpenSSH, PKCS#1, SEC1 or PKCS#8 PEM, unencrypted), at most 100 KiB as upstream. */
export async function loadAgentKey(path: string): Promise<AgentKey> {
  let text: string;
  try {
    const fh = await open(path, 'r');
    try {
      const buf = Buffer.alloc(100 * 1024);
      const { bytesRead } = await fh.read(buf, 0, buf.length, 0);
      text = buf.subarray(0, bytesRead).toString('utf8');
    } finally {
      await fh.close();
    }
  } catch (err) {
    throw new InvalidArgumentError(`failed to open ${path}: ${(err as Error).message}`, { cause: err });
  }
  try {
    const m = /-----BEGIN OPENSSH PRIVATE KEY-----([\s\S]*?)-----END OPENSSH PRIVATE KEY-----/.exec(text);
    const key = m ? parseOpenSshKey(Buffer.from(m[1]!.replace(/\s+/g, ''), 'base64')) : createPrivateKey(text);
    return describeKey(key, path);
  } catch (err) {
    throw new InvalidArgumentError(`failed to parse ${path}: ${(err as Error).message}`, { cause: err });
  }
}

function describeKey(key: KeyObject, comment: string): AgentKey {
  const jwk = createPublicKey(key).export({ format: 'jwk' });
  const b64 = (s: string | undefined): Buffer => Buffer.from(s ?? '', 'base64url');
  if (key.asymmetricKeyType === 'ed25519') {
    return { type: 'ssh-ed25519', key, comment, blob: sshPack([str('ssh-ed25519'), str(b64(jwk.x))]) };
  }
  if (key.asymmetricKeyType === 'rsa') {
    return { type: 'ssh-rsa', key, comment, blob: sshPack([str('ssh-rsa'), mpint(b64(jwk.e)), mpint(b64(jwk.n))]) };
  }
  if (key.asymmetricKeyType === 'ec') {
    const bits = ({ 'P-256': 256, 'P-384': 384, 'P-521': 521 } as const)[jwk.crv as 'P-256'];
    if (!bits) throw new Error(`unsupported curve ${String(jwk.crv)}`);
    const type = `ecdsa-sha2-nistp${bits}` as const;
    const q = Buffer.concat([Buffer.from([4]), b64(jwk.x), b64(jwk.y)]);
    return { type, key, comment, blob: sshPack([str(type), str(`nistp${bits}`), str(q)]) };
  }
  throw new Error(`unsupported key type ${String(key.asymmetricKeyType)}`);
}

/** The OpenSSH private key container (unencrypted keys only: upstream would prompt for a passphrase it cannot ask). */
function parseOpenSshKey(buf: Buffer): KeyObject {
  const r = new Reader(buf);
  const magic = r.bytes(15).toString('latin1');
  if (magic !== 'openssh-key-v1\0') throw new Error('not an openssh-key-v1 key');
  const cipher = r.string().toString();
  r.string(); // kdf name
  r.string(); // kdf options
  if (cipher !== 'none') throw new Error('passphrase protected keys are not supported');
  const n = r.u32();
  if (n !== 1) throw new Error(`expected one key, found ${n}`);
  r.string(); // public key
  const p = new Reader(r.string());
  if (p.u32() !== p.u32()) throw new Error('corrupt key (check bytes differ)');
  const type = p.string().toString();
  const u = (b: Buffer): string => stripZero(b).toString('base64url');
  if (type === 'ssh-ed25519') {
    const pub = p.string();
    const priv = p.string();
    return createPrivateKey({ key: { kty: 'OKP', crv: 'Ed25519', x: pub.toString('base64url'), d: priv.subarray(0, 32).toString('base64url') }, format: 'jwk' });
  }
  if (type === 'ssh-rsa') {
    const nn = p.string(), e = p.string(), d = p.string(), iqmp = p.string(), pp = p.string(), q = p.string();
    const bi = (b: Buffer): bigint => BigInt('0x' + (b.toString('hex') || '0'));
    const toB = (x: bigint): string => {
      let h = x.toString(16);
      if (h.length % 2) h = '0' + h;
      return Buffer.from(h, 'hex').toString('base64url');
    };
    const dv = bi(d);
    return createPrivateKey({
      key: { kty: 'RSA', n: u(nn), e: u(e), d: u(d), p: u(pp), q: u(q), dp: toB(dv % (bi(pp) - 1n)), dq: toB(dv % (bi(q) - 1n)), qi: u(iqmp) },
      format: 'jwk',
    });
  }
  const curves: Record<string, { crv: string; len: number }> = {
    'ecdsa-sha2-nistp256': { crv: 'P-256', len: 32 },
    'ecdsa-sha2-nistp384': { crv: 'P-384', len: 48 },
    'ecdsa-sha2-nistp521': { crv: 'P-521', len: 66 },
  };
  const c = curves[type];
  if (c) {
    p.string(); // curve name
    const q = p.string();
    const d = stripZero(p.string());
    const pad = (b: Buffer): string => Buffer.concat([Buffer.alloc(Math.max(0, c.len - b.length)), b]).toString('base64url');
    return createPrivateKey({
      key: { kty: 'EC', crv: c.crv, x: pad(q.subarray(1, 1 + c.len)), y: pad(q.subarray(1 + c.len)), d: pad(d) },
      format: 'jwk',
    });
  }
  throw new Error(`unsupported key type ${type}`);
}

export class KeyAgent {
  readonly #keys: AgentKey[];
  constructor(keys: AgentKey[]) {
    this.#keys = keys;
  }

  /** One agent connection: push request bytes in, read reply bytes out. */
  connection(): { push(b: Uint8Array): void; end(): void; replies(): AsyncIterable<Buffer> } {
    let buf = Buffer.alloc(0);
    const out: Buffer[] = [];
    let ended = false;
    let wake: (() => void) | undefined;
    const notify = (): void => {
      const w = wake;
      wake = undefined;
      w?.();
    };
    return {
      push: (b) => {
        buf = Buffer.concat([buf, b]);
        while (buf.length >= 4) {
          const len = buf.readUInt32BE(0);
          if (len > 256 * 1024) {
            ended = true;
            break;
          }
          if (buf.length < 4 + len) break;
          const msg = buf.subarray(4, 4 + len);
          buf = buf.subarray(4 + len);
          const reply = this.handle(msg);
          const hdr = Buffer.alloc(4);
          hdr.writeUInt32BE(reply.length);
          out.push(hdr, reply);
        }
        notify();
      },
      end: () => {
        ended = true;
        notify();
      },
      replies: async function* () {
        for (;;) {
          while (out.length) yield out.shift()!;
          if (ended) return;
          await new Promise<void>((r) => (wake = r));
        }
      },
    };
  }

  /** Answers one request message (without its length prefix). */
  handle(msg: Buffer): Buffer {
    try {
      const r = new Reader(msg);
      const type = r.u8();
      if (type === REQUEST_IDENTITIES) {
        const parts = [Buffer.from([IDENTITIES_ANSWER]), u32(this.#keys.length)];
        for (const k of this.#keys) parts.push(str(k.blob), str(k.comment));
        return Buffer.concat(parts);
      }
      if (type === SIGN_REQUEST) {
        const blob = r.string();
        const data = r.string();
        const flags = r.u32();
        const k = this.#keys.find((x) => x.blob.equals(blob));
        if (!k) return Buffer.from([FAILURE]);
        return Buffer.concat([Buffer.from([SIGN_RESPONSE]), str(signWith(k, data, flags))]);
      }
    } catch {
      // A malformed request gets a failure, as any unsupported one.
    }
    return Buffer.from([FAILURE]);
  }
}

function signWith(k: AgentKey, data: Buffer, flags: number): Buffer {
  if (k.type === 'ssh-ed25519') return sshPack([str('ssh-ed25519'), str(sign(null, data, k.key))]);
  if (k.type === 'ssh-rsa') {
    const [alg, hash] = flags & RSA_SHA2_512 ? ['rsa-sha2-512', 'sha512'] : flags & RSA_SHA2_256 ? ['rsa-sha2-256', 'sha256'] : ['ssh-rsa', 'sha1'];
    return sshPack([str(alg), str(sign(hash, data, k.key))]);
  }
  const bits = Number(k.type.slice('ecdsa-sha2-nistp'.length));
  const hash = bits === 256 ? 'sha256' : bits === 384 ? 'sha384' : 'sha512';
  const sig = sign(hash, data, { key: k.key, dsaEncoding: 'ieee-p1363' });
  const half = sig.length / 2;
  return sshPack([str(k.type), str(sshPack([mpint(sig.subarray(0, half)), mpint(sig.subarray(half))]))]);
}

class Reader {
  #off = 0;
  constructor(readonly buf: Buffer) {}
  bytes(n: number): Buffer {
    if (this.#off + n > this.buf.length) throw new Error('truncated');
    const b = this.buf.subarray(this.#off, this.#off + n);
    this.#off += n;
    return b;
  }
  u8(): number {
    return this.bytes(1)[0]!;
  }
  u32(): number {
    return this.bytes(4).readUInt32BE(0);
  }
  string(): Buffer {
    return this.bytes(this.u32());
  }
}

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
}
function str(s: string | Buffer): Buffer {
  const b = typeof s === 'string' ? Buffer.from(s) : s;
  return Buffer.concat([u32(b.length), b]);
}
function stripZero(b: Buffer): Buffer {
  let i = 0;
  while (i < b.length - 1 && b[i] === 0) i++;
  return b.subarray(i);
}
/** SSH mpint of an unsigned big-endian number: minimal, with a 0 byte when the top bit is set. */
function mpint(b: Buffer): Buffer {
  let v = stripZero(b);
  if (v.length === 1 && v[0] === 0) v = Buffer.alloc(0);
  if (v.length && v[0]! & 0x80) v = Buffer.concat([Buffer.from([0]), v]);
  return str(v);
}
function sshPack(parts: Buffer[]): Buffer {
  return Buffer.concat(parts);
}
