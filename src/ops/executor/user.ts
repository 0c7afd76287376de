import { InvalidArgumentError } from '../../util/errors.js';
import { parseGroup, parsePasswd, readAccountFile } from '../../util/passwd.js';

/** The identity a step's process runs as. `additionalGids` always holds `gid` (first). */
export interface ExecUser {
  uid: number;
  gid: number;
  additionalGids: number[];
  home: string;
}

const MAX_ID = 2 ** 31 - 1;

/** Go's strconv.Atoi: an optional sign and decimal digits, else undefined. */
function atoi(s: string): number | undefined {
  if (!/^[+-]?\d+$/.test(s)) return undefined;
  const n = Number(s);
  return Number.isSafeInteger(n) ? n : undefined;
}

function parseId(s: string): number | undefined {
  if (s === 'root') return 0;
  if (!/^\d+$/.test(s)) return undefined;
  const n = Number(s);
  return n <= 0xffffffff ? n : undefined;
}

/**
 * Resolves a step's `user` (`name`, `uid`, `name:group`, `uid:gid`, '' for root) against the
 * rootfs's /etc/passwd and /etc/group, with the semantics BuildKit gets from runc's
 * libcontainer/user: a numeric user is a uid whether or not passwd has it; a named user or group
 * must exist; without a group, the supplementary groups are those listing the user as a member.
 * Both files are read with a size cap and refused unless regular (util/passwd.ts).
 */
export async function resolveUser(rootfs: string, spec: string): Promise<ExecUser> {
  const isDefault = spec === '';
  const user = isDefault ? '0' : spec;

  // Fast path as upstream: two numeric ids need no files at all.
  const colon = user.indexOf(':');
  if (colon >= 0) {
    const u = parseId(user.slice(0, colon));
    const g = parseId(user.slice(colon + 1));
    if (u !== undefined && g !== undefined) return { uid: u, gid: g, additionalGids: [g], home: '/' };
  }

  const passwd = await readAccountFile(rootfs, '/etc/passwd');
  const group = await readAccountFile(rootfs, '/etc/group');
  try {
    return withPrimaryGid(execUser(user, passwd, group));
  } catch (err) {
    if (isDefault) return { uid: 0, gid: 0, additionalGids: [0], home: '/' };
    throw err;
  }
}

function withPrimaryGid(u: ExecUser): ExecUser {
  if (!u.additionalGids.includes(u.gid)) u.additionalGids = [u.gid, ...u.additionalGids];
  return u;
}

/**
 * runc's GetExecUser. A missing file reads as a failed read (upstream opens it and gets an invalid
 * handle), hence upstream's `unable to find user root: invalid argument` for an image without
 * /etc/passwd.
 */
export function execUser(spec: string, passwd: string | null, group: string | null): ExecUser {
  const fields = spec.split(':');
  const userArg = fields[0] ?? '';
  const groupArg = fields[1] ?? '';
  const uidArg = atoi(userArg);
  const gidArg = atoi(groupArg);
  const out: ExecUser = { uid: 0, gid: 0, additionalGids: [], home: '' };

  if (passwd === null) throw new InvalidArgumentError(`unable to find user ${userArg || '0'}: invalid argument`);
  const users = parsePasswd(passwd).filter((u) => {
    if (userArg === '') return u.uid === out.uid;
    if (uidArg !== undefined) return u.uid === uidArg;
    return u.name === userArg;
  });
  let matchedName = '';
  if (users.length > 0) {
    const u = users[0]!;
    matchedName = u.name;
    out.uid = u.uid;
    out.gid = u.gid;
    out.home = u.home;
  } else if (userArg !== '') {
    if (uidArg === undefined) throw new InvalidArgumentError(`unable to find user ${userArg}: no matching entries in passwd file`);
    if (uidArg < 0 || uidArg > MAX_ID) throw new InvalidArgumentError(`uids and gids must be in range 0-${MAX_ID}`);
    out.uid = uidArg;
  }

  if (groupArg !== '' || matchedName !== '') {
    if (group === null) throw new InvalidArgumentError(`unable to find groups for spec ${matchedName}: invalid argument`);
    const groups = parseGroup(group).filter((g) => {
      if (groupArg === '') return g.members.includes(matchedName);
      if (gidArg !== undefined) return g.gid === gidArg;
      return g.name === groupArg;
    });
    if (groupArg !== '') {
      if (groups.length > 0) {
        out.gid = groups[0]!.gid;
      } else {
        if (gidArg === undefined) throw new InvalidArgumentError(`unable to find group ${groupArg}: no matching entries in group file`);
        if (gidArg < 0 || gidArg > MAX_ID) throw new InvalidArgumentError(`uids and gids must be in range 0-${MAX_ID}`);
        out.gid = gidArg;
      }
    } else if (groups.length > 0) {
      out.additionalGids = groups.map((g) => g.gid);
    }
  }
  return out;
}
