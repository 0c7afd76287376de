import { NetMode, SecurityMode, type ExecOp } from '../gen/buildkit/ops_pb.js';
import { LoomError } from '../util/errors.js';
import type { LoadedDefinition } from './definition.js';

/**
 * Checks a step's network and security modes against the build's entitlements (those both the
 * daemon allows and the client asked for). Upstream's words: `network.host is not allowed`, a
 * plain error (gRPC Unknown) there, so clients print it with no code, as here.
 */
export function checkExecEntitlements(op: ExecOp, entitlements: ReadonlySet<string>): void {
  if (op.network === NetMode.HOST && !entitlements.has('network.host')) throw new LoomError('UNKNOWN', 'network.host is not allowed');
  if (op.security === SecurityMode.INSECURE && !entitlements.has('security.insecure')) throw new LoomError('UNKNOWN', 'security.insecure is not allowed');
}

/** The whole graph checked before anything runs, as upstream does when it loads the LLB. */
export function checkEntitlements(def: LoadedDefinition, entitlements: ReadonlySet<string>): void {
  for (const v of def.vertices.values()) {
    if (v.op.op.case !== 'exec') continue;
    try {
      checkExecEntitlements(v.op.op.value, entitlements);
    } catch (err) {
      throw new LoomError('UNKNOWN', `failed to load LLB: ${(err as Error).message}`, { cause: err });
    }
  }
}
