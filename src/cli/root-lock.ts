import Database from 'better-sqlite3';
import { join } from 'node:path';
import { LoomError } from '../util/errors.js';

/**
 * An exclusive lock on the state directory, held for the daemon's life. It is SQLite's own file
 * lock (fcntl), so the kernel drops it when the process dies: a crashed daemon never leaves a
 * stale lock behind, and a second daemon on the same root is refused at once.
 */
export class RootLock {
  readonly #db: Database.Database;

  private constructor(db: Database.Database) {
    this.#db = db;
  }

  static acquire(root: string): RootLock {
    const file = join(root, 'buildkitd.lock');
    const db = new Database(file, { timeout: 0 });
    try {
      db.pragma('journal_mode = MEMORY');
      db.pragma('locking_mode = EXCLUSIVE');
      db.exec('CREATE TABLE IF NOT EXISTS owner (pid INTEGER)');
      db.exec('BEGIN EXCLUSIVE');
      db.exec('DELETE FROM owner');
      db.prepare('INSERT INTO owner (pid) VALUES (?)').run(process.pid);
      db.exec('COMMIT');
    } catch (err) {
      db.close();
      if ((err as { code?: string }).code === 'SQLITE_BUSY') {
        throw new LoomError('FAILED_PRECONDITION', `another buildkitd is running with root ${root} (lock ${file} is held)`);
      }
      throw err;
    }
    return new RootLock(db);
  }

  release(): void {
    this.#db.close();
  }
}
