import type { Vertex } from '../llb/definition.js';
import { DiffOpImpl, MergeOpImpl } from '../ops/merge-diff-op.js';
import { ExecOp, execSupport } from '../ops/exec-op.js';
import { FileOpImpl } from '../ops/file-op.js';
import { ImageSourceOp } from '../ops/source/docker-image.js';
import { GitSourceOp } from '../ops/source/git.js';
import { HttpSourceOp } from '../ops/source/http.js';
import { LocalSourceOp } from '../ops/source/local.js';
import type { OpImpl, OpResolver } from '../solver/types.js';
import { InvalidArgumentError, NotFoundError, UnimplementedError } from '../util/errors.js';
import type { WorkerDeps } from './worker.js';

/** Maps each vertex to the implementation of its op kind (sources by identifier scheme). */
export function createOpResolver(d: WorkerDeps): OpResolver {
  const registries = d.registries;
  const mirrors = d.localMirrors;
  return (v: Vertex): OpImpl => {
    const op = v.op.op;
    switch (op.case) {
      case 'source': {
        const { identifier, attrs } = op.value;
        const sep = identifier.indexOf('://');
        // Upstream's wording (source.FromString), met as the op's cache key is loaded.
        if (sep < 0) throw new InvalidArgumentError(`failed to load cache key: failed to parse ${identifier}: invalid`);
        const scheme = identifier.slice(0, sep);
        switch (scheme) {
          case 'docker-image':
            return new ImageSourceOp({ registries, refs: d.refs, layers: d.layers, content: d.content, metadata: d.metadata }, identifier, attrs);
          case 'local':
            return new LocalSourceOp({ root: d.root, refs: d.refs, metadata: d.metadata, sessions: d.sessions, mirrors }, identifier, attrs);
          case 'http':
          case 'https':
            return new HttpSourceOp({ refs: d.refs, metadata: d.metadata }, identifier, attrs);
          case 'git':
            return new GitSourceOp({ refs: d.refs }, identifier, attrs);
          case 'oci-layout':
            throw new UnimplementedError(`source ${identifier}: oci-layout sources are not supported by loom yet`);
          default:
            throw new NotFoundError(`failed to load cache key: unknown schema ${scheme}: not found`);
        }
      }
      case 'file':
        return new FileOpImpl({ refs: d.refs }, op.value);
      case 'merge':
        return new MergeOpImpl({ refs: d.refs }, op.value);
      case 'diff':
        return new DiffOpImpl({ refs: d.refs }, op.value);
      case 'exec':
        return new ExecOp(execSupport(d), op.value);
      default:
        throw new InvalidArgumentError(`unsupported op ${op.case ?? 'unknown'}`);
    }
  };
}
