import { execFileSync } from 'node:child_process';
import { chmod, lstat, mkdir, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, describe, expect, test } from 'vitest';
import {
  fileCanRequestData,
  GoMode,
  goModeFromPosix,
  goModeString,
  posixModeFromGo,
  posixPermFromGo,
} from '../../../../src/session/filesync/mode.js';
import { removeDirs, tempDir } from './tree-helpers.js';

const dirs: string[] = [];
afterEach(() => removeDirs(dirs));

describe('Go FileMode <-> POSIX mode', () => {
  // Values as Go's os.Lstat reports them on Linux (uint32(fi.Mode())).
  test.each([
    ['regular 0644', 0o100644, 0o644, '-rw-r--r--'],
    ['dir 0755', 0o040755, 2147484141, 'drwxr-xr-x'],
    ['symlink', 0o120777, 134218239, 'Lrwxrwxrwx'],
    ['setuid 4755', 0o104755, 0o755 + 8388608, 'urwxr-xr-x'],
    ['setgid 2711', 0o102711, 0o711 + 4194304, 'grwx--x--x'],
    ['sticky dir 1777', 0o041777, 2147483648 + 1048576 + 0o777, 'dtrwxrwxrwx'],
    ['char device', 0o020666, 67108864 + 2097152 + 0o666, 'Dcrw-rw-rw-'],
    ['block device', 0o060660, 67108864 + 0o660, 'Drw-rw----'],
    ['fifo', 0o010644, 33554432 + 0o644, 'prw-r--r--'],
    ['socket', 0o140755, 16777216 + 0o755, 'Srwxr-xr-x'],
  ])('%s', (_name, posix, go, str) => {
    expect(goModeFromPosix(posix)).toBe(go);
    expect(posixModeFromGo(go)).toBe(posix);
    expect(goModeString(go)).toBe(str);
  });

  test('chmod argument keeps the special bits in POSIX positions', () => {
    expect(posixPermFromGo((GoMode.setuid | GoMode.setgid | GoMode.sticky | 0o755) >>> 0)).toBe(0o7755);
    expect(posixPermFromGo((GoMode.dir | 0o700) >>> 0)).toBe(0o700);
  });

  test('only regular files (hard links included) can be requested', () => {
    expect(fileCanRequestData(0o644)).toBe(true);
    expect(fileCanRequestData((GoMode.setuid | 0o755) >>> 0)).toBe(true);
    for (const t of [GoMode.dir, GoMode.symlink, GoMode.namedPipe, GoMode.device, GoMode.socket, GoMode.irregular]) {
      expect(fileCanRequestData((t | 0o644) >>> 0)).toBe(false);
    }
  });

  test('real files round-trip', async () => {
    const d = await tempDir();
    dirs.push(d);
    await writeFile(join(d, 'f'), '');
    await chmod(join(d, 'f'), 0o4751);
    await mkdir(join(d, 'd'));
    await chmod(join(d, 'd'), 0o3775);
    await symlink('x', join(d, 'l'));
    execFileSync('mkfifo', [join(d, 'p')]);
    for (const n of ['f', 'd', 'l', 'p']) {
      const st = await lstat(join(d, n));
      expect(posixModeFromGo(goModeFromPosix(st.mode))).toBe(st.mode);
    }
    expect(goModeString(goModeFromPosix((await lstat(join(d, 'd'))).mode))).toBe('dgtrwxrwxr-x');
  });
});
