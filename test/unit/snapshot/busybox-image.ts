import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, statSync } from 'node:fs';
import path from 'node:path';
import { createGunzip } from 'node:zlib';
import { applyLayerTar } from '../../../src/snapshot/layer/apply-layer-tar.js';
import type { Snapshotter } from '../../../src/snapshot/snapshotter.js';
import type { DiffPair, LayerRef } from '../../../src/ops/merge-diff/chain.js';
import { fixtureCacheDir } from '../../helpers/registry.js';

/** Shared test data: the busybox OCI layout of the upstream vectors, and root checks. */

export const VECTORS = process.env.LOOM_VECTORS ?? path.resolve(import.meta.dirname, '../../../../shared/vectors');
export const HAVE_VECTORS = existsSync(path.join(VECTORS, 'oci/busybox-multiarch-oci.tar'));
export const IS_ROOT = process.getuid?.() === 0;

let layoutDir: string | null = null;

/**
 * The OCI layout, unpacked once into the fixture cache and shared by every test process and run
 * (a copy per process in /tmp was left behind by each: vitest ends its workers without 'exit').
 */
export function busyboxLayout(): string {
  if (layoutDir) return layoutDir;
  const tar = path.join(VECTORS, 'oci/busybox-multiarch-oci.tar');
  // Named by the archive's content (2 MiB, a few ms to hash), not its mtime: a fresh copy of the
  // vectors (every CI checkout) would otherwise leave one more unpacked layout behind each time.
  const data = readFileSync(tar);
  const name = `busybox-layout-${createHash('sha256').update(data).digest('hex').slice(0, 16)}`;
  const d = path.join(fixtureCacheDir(), name);
  if (!existsSync(path.join(d, 'index.json'))) {
    mkdirSync(fixtureCacheDir(), { recursive: true });
    removeStaleLayouts(name);
    const tmp = mkdtempSync(path.join(fixtureCacheDir(), 'busybox-layout-tmp-'));
    execFileSync('tar', ['-xf', tar, '-C', tmp]);
    try {
      renameSync(tmp, d);
    } catch {
      // Another process put it there first.
      rmSync(tmp, { recursive: true, force: true });
    }
  }
  layoutDir = d;
  return d;
}

/** Layouts unpacked from another archive (older vectors, or named by mtime as before) an hour ago or more. */
function removeStaleLayouts(keep: string): void {
  for (const e of readdirSync(fixtureCacheDir())) {
    if (!e.startsWith('busybox-layout-') || e === keep || e.startsWith('busybox-layout-tmp-')) continue;
    const p = path.join(fixtureCacheDir(), e);
    if (Date.now() - statSync(p).mtimeMs > 3600_000) rmSync(p, { recursive: true, force: true });
  }
}

function blob(digest: string): string {
  return path.join(busyboxLayout(), 'blobs', ...digest.split(':'));
}

/** The amd64 layer blobs (gzip) in order. */
export function busyboxLayers(arch = 'amd64'): string[] {
  const index = JSON.parse(readFileSync(path.join(busyboxLayout(), 'index.json'), 'utf8'));
  let desc = index.manifests[0];
  let doc = JSON.parse(readFileSync(blob(desc.digest), 'utf8'));
  while (doc.manifests) {
    desc = doc.manifests.find((m: { platform?: { architecture: string } }) => !m.platform || m.platform.architecture === arch);
    doc = JSON.parse(readFileSync(blob(desc.digest), 'utf8'));
  }
  return doc.layers.map((l: { digest: string }) => blob(l.digest));
}

/** Unpacks the image into one committed snapshot per layer, as the image source will. */
export async function busyboxRef(sn: Snapshotter, prefix: string): Promise<LayerRef> {
  const chain: DiffPair[] = [];
  let parent: string | null = null;
  for (const [i, layer] of busyboxLayers().entries()) {
    const key = `${prefix}-layer${i}`;
    const dir = await sn.prepare(key, parent);
    await applyLayerTar(createReadStream(layer).pipe(createGunzip()), dir);
    await sn.commit(key);
    chain.push({ lower: parent, upper: key });
    parent = key;
  }
  return { snapshot: parent!, chain };
}

/**
 * `tar -tvf --numeric-owner` of a tar, in the vectors README's listing format: `mode owner/group
 * size path [-> target]`, sorted by path, busybox applet links under bin/, sbin/, usr/bin/,
 * usr/sbin/ left out.
 */
export function tarListing(tarFile: string): string {
  const out = execFileSync('tar', ['-tvf', tarFile, '--numeric-owner'], { encoding: 'utf8', maxBuffer: 64 << 20 });
  const rows: { path: string; line: string }[] = [];
  for (const raw of out.split('\n')) {
    if (raw.trim() === '') continue;
    const m = /^(\S+)\s+(\S+)\s+(\d+(?:,\s*\d+)?)\s+\S+\s+\S+\s+(.*)$/.exec(raw);
    if (!m) throw new Error(`unexpected tar listing line ${JSON.stringify(raw)}`);
    const [, mode, owner, size, rest] = m;
    const [p, target] = rest!.split(' -> ');
    if (target === '/bin/busybox' && /^(bin|sbin|usr\/bin|usr\/sbin)\/[^/]+$/.test(p!)) continue;
    rows.push({ path: p!, line: `${mode} ${owner} ${size!.replace(/\s+/g, '')} ${rest}`.trimEnd() });
  }
  rows.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  return rows.map((r) => r.line).join('\n') + '\n';
}
