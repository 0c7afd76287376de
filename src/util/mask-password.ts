/** A URL with its password (if any) replaced by `mask`; anything that is not a URL as it is. */
export function maskPassword(s: string, mask: string): string {
  try {
    const u = new URL(s);
    if (!u.password) return s;
    u.password = mask;
    return u.toString();
  } catch {
    return s;
  }
}
