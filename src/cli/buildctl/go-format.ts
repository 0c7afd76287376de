import type { Timestamp } from '@bufbuild/protobuf/wkt';
import type { Platform } from '../../gen/buildkit/ops_pb.js';

/** Go's time.Time.String() in UTC: `2006-01-02 15:04:05.999999999 +0000 UTC` (fraction trimmed). */
export function goTime(t: Timestamp | undefined): string {
  const secs = t ? Number(t.seconds) : -62135596800;
  const nanos = t ? t.nanos : 0;
  const d = new Date(secs * 1000);
  const p = (n: number, w = 2): string => String(n).padStart(w, '0');
  let frac = '';
  if (nanos > 0) frac = '.' + String(nanos).padStart(9, '0').replace(/0+$/, '');
  return `${p(d.getUTCFullYear(), 4)}-${p(d.getUTCMonth() + 1)}-${p(d.getUTCDate())} ${p(d.getUTCHours())}:${p(d.getUTCMinutes())}:${p(d.getUTCSeconds())}${frac} +0000 UTC`;
}

/** containerd's platforms.Format(platforms.Normalize(p)): `linux/amd64`, `linux/arm/v7`. */
export function formatPlatform(p: Platform): string {
  const os = (p.OS || '').toLowerCase();
  let arch = (p.Architecture || '').toLowerCase();
  let variant = p.Variant || '';
  switch (arch) {
    case 'i386':
      arch = '386';
      variant = '';
      break;
    case 'x86_64':
    case 'x86-64':
    case 'amd64':
      arch = 'amd64';
      if (variant === 'v1') variant = '';
      break;
    case 'aarch64':
    case 'arm64':
      arch = 'arm64';
      if (variant === '8' || variant === 'v8') variant = '';
      break;
    case 'armhf':
      arch = 'arm';
      variant = 'v7';
      break;
    case 'armel':
      arch = 'arm';
      variant = 'v6';
      break;
    case 'arm':
      if (variant === '') variant = 'v7';
      else if (/^[5-8]$/.test(variant)) variant = 'v' + variant;
      break;
  }
  return [os || 'unknown', arch, variant].filter((x) => x !== '').join('/');
}

/**
 * Go's json.MarshalIndent layout for JSON text: compact, then a newline and indent after `{`/`[`
 * and `,`, `": "` after keys, empty objects and arrays kept as `{}`/`[]`; `<`, `>`, `&` escaped as
 * Go's encoder does. Key order and number spelling are kept as they are in the text.
 */
export function goIndentJson(text: string, indent = '  '): string {
  let out = '';
  let depth = 0;
  let inStr = false;
  let esc = false;
  const nl = (): string => '\n' + indent.repeat(depth);
  for (let i = 0; i < text.length; i++) {
    const c = text[i]!;
    if (inStr) {
      if (esc) esc = false;
      else if (c === '\\') esc = true;
      else if (c === '"') inStr = false;
      out += c === '<' ? '\\u003c' : c === '>' ? '\\u003e' : c === '&' ? '\\u0026' : c === '\u2028' ? '\\u2028' : c === '\u2029' ? '\\u2029' : c;
      continue;
    }
    if (/\s/.test(c)) continue;
    if (c === '"') {
      inStr = true;
      out += c;
    } else if (c === '{' || c === '[') {
      let j = i + 1;
      while (j < text.length && /\s/.test(text[j]!)) j++;
      const close = c === '{' ? '}' : ']';
      if (text[j] === close) {
        out += c + close;
        i = j;
        continue;
      }
      depth++;
      out += c + nl();
    } else if (c === '}' || c === ']') {
      depth--;
      out += nl() + c;
    } else if (c === ',') {
      out += ',' + nl();
    } else if (c === ':') {
      out += ': ';
    } else {
      out += c;
    }
  }
  return out;
}
