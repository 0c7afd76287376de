import { InvalidArgumentError } from '../util/errors.js';

/**
 * SOURCE_DATE_EPOCH for exporters, as upstream v0.11's: the `source-date-epoch` exporter attribute
 * (the daemon copies the frontend's `build-arg:SOURCE_DATE_EPOCH` there when the client set none).
 * The image exporters clamp the config's times to it, the oci and docker archives stamp it as the
 * image's creation time, and the local and tar exporters give every file it as modification time.
 */
export const SOURCE_DATE_EPOCH_ATTR = 'source-date-epoch';
export const SOURCE_DATE_EPOCH_BUILD_ARG = 'build-arg:SOURCE_DATE_EPOCH';

/** The attribute's time: undefined when absent or empty; seconds since 1970 as Go's ParseInt reads them. */
export function parseEpochAttr(attrs: Record<string, string>): Date | undefined {
  const v = attrs[SOURCE_DATE_EPOCH_ATTR];
  if (v === undefined || v === '') return undefined;
  if (!/^[+-]?\d+$/.test(v)) throw new InvalidArgumentError(`invalid ${SOURCE_DATE_EPOCH_ATTR}: strconv.ParseInt: parsing ${JSON.stringify(v)}: invalid syntax`);
  const n = BigInt(v);
  // Go reads int64 seconds; a Date holds ±8.64e12 s, well inside that: beyond it is out of range.
  if (n > 8_640_000_000_000n || n < -8_640_000_000_000n) {
    throw new InvalidArgumentError(`invalid ${SOURCE_DATE_EPOCH_ATTR}: strconv.ParseInt: parsing ${JSON.stringify(v)}: value out of range`);
  }
  return new Date(Number(n) * 1000);
}

/** The attributes an exporter gets: upstream's control API adds the frontend's SOURCE_DATE_EPOCH when the exporter has no time of its own. */
export function withFrontendEpoch(attrs: Record<string, string>, frontendAttrs: Record<string, string>): Record<string, string> {
  const v = frontendAttrs[SOURCE_DATE_EPOCH_BUILD_ARG];
  if (v === undefined || SOURCE_DATE_EPOCH_ATTR in attrs) return attrs;
  return { ...attrs, [SOURCE_DATE_EPOCH_ATTR]: v };
}

/** Nanoseconds since 1970, as fsutil's Stat.ModTime holds a time. */
export function epochNanos(d: Date): bigint {
  return BigInt(d.getTime()) * 1_000_000n;
}
