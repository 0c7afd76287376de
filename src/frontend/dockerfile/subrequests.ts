/**
 * Frontend subrequests (`requestid` in the frontend options): instead of a build, the frontend
 * answers with metadata only. buildx asks for them with `--print=outline|targets` (`--call` in
 * later releases). The three upstream's v0.11 Dockerfile frontend serves:
 *
 * - `frontend.subrequests.describe`: the subrequests this frontend answers;
 * - `frontend.targets`: the stages a build could target, with the comment above each FROM;
 * - `frontend.outline`: the build args, secrets and ssh sockets the target stage (and the stages
 *   it builds on) uses, with their defaults and comments.
 *
 * Each answer is `result.json` (Go's json.MarshalIndent of upstream's types, with their field
 * names and omitempty rules, so clients that decode it read the same), `result.txt` (the table
 * upstream prints with text/tabwriter, byte for byte) and `version`.
 */
import { goJSON, goRangesJSON } from '../../content/go-json.js';
import { tabwrite as goTabwrite } from '../../util/tabwriter.js';
import type { Range } from './errors.js';
import { parseStages } from './instructions.js';

export const REQUEST_DESCRIBE = 'frontend.subrequests.describe';
export const REQUEST_OUTLINE = 'frontend.outline';
export const REQUEST_TARGETS = 'frontend.targets';

const VERSION = '1.0.0';

interface Named {
  name: string;
  description: string;
}

/** A subrequest's definition as upstream's subrequests.Request marshals (no omitempty: nil slices are null). */
interface RequestDefinition {
  name: string;
  version: string;
  type: 'rpc';
  description: string;
  opts: Named[] | null;
  inputs: Named[] | null;
  metadata: Named[] | null;
  refs: Named[] | null;
}

const RESULT_METADATA: Named[] = [
  { name: 'result.json', description: '' },
  { name: 'result.txt', description: '' },
];

const DEFINITIONS: RequestDefinition[] = [
  {
    name: REQUEST_OUTLINE,
    version: VERSION,
    type: 'rpc',
    description: 'List all parameters current build target supports',
    opts: [{ name: 'target', description: 'Target build stage' }],
    inputs: null,
    metadata: RESULT_METADATA,
    refs: null,
  },
  {
    name: REQUEST_TARGETS,
    version: VERSION,
    type: 'rpc',
    description: 'List all targets current build supports',
    opts: [],
    inputs: null,
    metadata: RESULT_METADATA,
    refs: null,
  },
  {
    name: REQUEST_DESCRIBE,
    version: VERSION,
    type: 'rpc',
    description: 'List available subrequest types',
    opts: null,
    inputs: null,
    metadata: RESULT_METADATA,
    refs: null,
  },
];

/** Whether the frontend answers this request id itself (the others are unsupported). */
export function isKnownSubrequest(id: string): boolean {
  return DEFINITIONS.some((d) => d.name === id);
}

/** A subrequest's answer: the metadata of a result with no refs. */
export type SubrequestMetadata = Record<string, Uint8Array>;

/** Upstream prints its tables with text/tabwriter: minwidth 0, tabwidth 0, padded with spaces. */
function tabwrite(text: string, padding: number): string {
  return goTabwrite(text, { minwidth: 0, tabwidth: 0, padding, padchar: ' ' });
}

function answer(json: string, text: string): SubrequestMetadata {
  return { 'result.json': Buffer.from(json), 'result.txt': Buffer.from(text), version: Buffer.from(VERSION) };
}

// --- upstream's pb.Location as JSON --------------------------------------------------------

function locationJSON(ranges: Range[]): { ranges: ReturnType<typeof goRangesJSON> } | undefined {
  return ranges.length === 0 ? undefined : { ranges: goRangesJSON(ranges) };
}

function firstLine(ranges: Range[]): number {
  return ranges[0]?.start.line ?? 0;
}

// --- describe ------------------------------------------------------------------------------

export function describeSubrequests(): SubrequestMetadata {
  const json = goJSON(DEFINITIONS, '  ');
  let txt = 'NAME\tVERSION\tDESCRIPTION\n';
  for (const d of DEFINITIONS) txt += `${d.name.replace(/^frontend\./, '')}\t${d.version}\t${d.description}\n`;
  return answer(json, tabwrite(txt, 1));
}

// --- targets -------------------------------------------------------------------------------

/** The stages of a Dockerfile as upstream's ListTargets reports them (names, bases and platforms as written). */
export function listTargets(dockerfile: Uint8Array): SubrequestMetadata {
  const { stages } = parseStages(dockerfile);
  const targets = stages.map((s, i) => {
    const t: Record<string, unknown> = {};
    if (s.name) t.name = s.name;
    if (i === stages.length - 1) t.default = true;
    if (s.comment) t.description = s.comment;
    if (s.baseName) t.base = s.baseName;
    if (s.platform) t.platform = s.platform;
    const loc = locationJSON(s.location);
    if (loc) t.location = loc;
    return t;
  });
  const json = goJSON({ targets: targets.length > 0 ? targets : null, sources: [Buffer.from(dockerfile).toString('base64')] }, '  ');
  let txt = 'TARGET\tDESCRIPTION\n';
  for (const t of targets) {
    let name = (t.name as string | undefined) ?? '';
    if (name === '' && t.default) name = '(default)';
    else if (t.default) name = `${name} (default)`;
    txt += `${name}\t${(t.description as string | undefined) ?? ''}\n`;
  }
  return answer(json, tabwrite(txt, 1));
}

// --- outline -------------------------------------------------------------------------------

export interface OutlineArg {
  name: string;
  description: string;
  value: string;
  location: Range[];
}

export interface OutlineMount {
  name: string;
  required: boolean;
  location: Range[];
}

/** What the conversion found the target uses (convert.ts collects it while dispatching). */
export interface OutlineData {
  name: string;
  description: string;
  args: OutlineArg[];
  secrets: OutlineMount[];
  ssh: OutlineMount[];
}

/** Sorted by the line they are declared on, as upstream (its sort is not stable; this one is). */
function byLine<T extends { location: Range[] }>(items: T[]): T[] {
  return [...items].sort((a, b) => firstLine(a.location) - firstLine(b.location));
}

export function outlineResult(o: OutlineData, dockerfile: Uint8Array): SubrequestMetadata {
  const args = byLine(o.args);
  const secrets = byLine(o.secrets);
  const ssh = byLine(o.ssh);
  const out: Record<string, unknown> = {};
  if (o.name) out.name = o.name;
  if (o.description) out.description = o.description;
  const withLoc = (v: Record<string, unknown>, l: Range[]) => {
    const loc = locationJSON(l);
    if (loc) v.location = loc;
    return v;
  };
  if (args.length > 0) {
    out.args = args.map((a) =>
      withLoc({ name: a.name, ...(a.description ? { description: a.description } : {}), ...(a.value ? { value: a.value } : {}) }, a.location),
    );
  }
  const mounts = (ms: OutlineMount[]) => ms.map((m) => withLoc({ name: m.name, ...(m.required ? { required: true } : {}) }, m.location));
  if (secrets.length > 0) out.secrets = mounts(secrets);
  if (ssh.length > 0) out.ssh = mounts(ssh);
  out.sources = [Buffer.from(dockerfile).toString('base64')];
  const json = goJSON(out, '  ');

  let txt = '';
  if (o.name || o.description) {
    let head = `TARGET:\t${o.name || '(default)'}\n`;
    if (o.description) head += `DESCRIPTION:\t${o.description}\n`;
    txt += tabwrite(head, 1) + '\n';
  }
  if (args.length > 0) {
    let t = 'BUILD ARG\tVALUE\tDESCRIPTION\n';
    for (const a of args) t += `${a.name}\t${a.value}\t${a.description}\n`;
    txt += tabwrite(t, 3) + '\n';
  }
  for (const [title, ms] of [['SECRET', secrets], ['SSH', ssh]] as const) {
    if (ms.length === 0) continue;
    let t = `${title}\tREQUIRED\n`;
    for (const m of ms) t += `${m.name}\t${m.required ? 'true' : ''}\n`;
    txt += tabwrite(t, 3) + '\n';
  }
  return answer(json, txt);
}
