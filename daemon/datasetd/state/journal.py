"""The journal: a SQLite cache of verified facts in <root>/.datasetd/journal.sqlite.

Only the coordinating process writes it. It is a cache, never the truth: if it
is lost, units are re-proved against their tars (adoption), never trusted.
WAL mode; `synchronous=FULL` around the commits that allow a delete.

Its file is opened, checked and, when damaged, moved aside by state.journal_file.
`PRAGMA user_version` is the schema generation; `_MIGRATIONS[i]` upgrades
generation i to i + 1 in one transaction (bandersnatch's storage generations).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from datasetd.core.model import UNPROVEN, FileRecord, Journal, UnitIndex
from datasetd.errors import JournalDamaged, PermanentError
from datasetd.state.journal_file import connect_read_only, move_aside, open_checked
from datasetd.state.safedir import check_own_dir

_SCHEMA_1 = """
CREATE TABLE IF NOT EXISTS archive (
    component TEXT PRIMARY KEY, path TEXT NOT NULL, size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL, ino INTEGER NOT NULL, dev INTEGER NOT NULL,
    sha256 TEXT NOT NULL, md5 TEXT, indexed INTEGER NOT NULL, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS unit_index (
    component TEXT NOT NULL, archive_sha256 TEXT NOT NULL, unit TEXT NOT NULL,
    offset INTEGER NOT NULL, size INTEGER NOT NULL, sha256 TEXT NOT NULL,
    files INTEGER NOT NULL, dirs INTEGER NOT NULL, bytes INTEGER NOT NULL, problem TEXT,
    PRIMARY KEY (component, archive_sha256, unit)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS unit (
    component TEXT NOT NULL, unit TEXT NOT NULL, archive_sha256 TEXT NOT NULL,
    state TEXT NOT NULL, files INTEGER NOT NULL, bytes INTEGER NOT NULL, at REAL NOT NULL,
    PRIMARY KEY (component, unit)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS file (
    component TEXT NOT NULL, unit TEXT NOT NULL, name TEXT NOT NULL,
    size INTEGER NOT NULL, sha256 TEXT NOT NULL,
    PRIMARY KEY (component, unit, name)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS step (
    id INTEGER PRIMARY KEY, at REAL NOT NULL, component TEXT NOT NULL, unit TEXT NOT NULL,
    action TEXT NOT NULL, outcome TEXT NOT NULL, detail TEXT);
"""

# _MIGRATIONS[i] takes a journal from generation i to i + 1. Generation 0 is an empty file or a
# journal written before generations existed (same tables: CREATE IF NOT EXISTS keeps them).
# Generation 2: each unit keeps the fingerprint of its directories (state/fswalk.py) from the last
# listing that found it intact, so a no-op apply stats directories, not files.
# (A table of its own rather than a column: CREATE IF NOT EXISTS makes the step idempotent.)
_DIRS_2 = """
CREATE TABLE IF NOT EXISTS unit_dirs (
    component TEXT NOT NULL, unit TEXT NOT NULL, dirs TEXT NOT NULL,
    PRIMARY KEY (component, unit)) WITHOUT ROWID;
"""
# Generation 3: each verified unit keeps the (inode, size, ctime_ns) of its files, one compressed blob
# per unit (state/filestats.py), so a delete re-proves a folder by stat instead of re-reading it.
# Units recorded before have none: their deletes re-hash, as generation 2 always did.
_FILE_STATS_3 = """
CREATE TABLE IF NOT EXISTS unit_stats (
    component TEXT NOT NULL, unit TEXT NOT NULL, stats BLOB NOT NULL,
    PRIMARY KEY (component, unit)) WITHOUT ROWID;
"""
_MIGRATIONS: tuple[str, ...] = (_SCHEMA_1, _DIRS_2, _FILE_STATS_3)
GENERATION = len(_MIGRATIONS)
JOURNAL_NAME = "journal.sqlite"
T = TypeVar("T")


@dataclass(frozen=True)
class ArchiveRow:
    path: str
    size: int
    mtime_ns: int
    ino: int
    dev: int
    sha256: str
    md5: str | None
    indexed: bool


@dataclass(frozen=True)
class UnitRow:
    state: Journal
    archive_sha256: str
    files: int
    bytes: int
    dirs: str | None = None  # fingerprint of the unit's directories when last found intact


class JournalDB:
    def __init__(self, state_dir: Path | None, full_check: bool = False) -> None:
        """`full_check`: `PRAGMA quick_check` of every page first (verify), not only the unit tables."""
        self.damaged: str | None = None  # why, once a read or write met damage the open check missed
        self.writer = state_dir is not None  # holds the root's lock: may move a damaged journal aside
        if state_dir is None:  # `plan` and `status` on a root datasetd never touched: write nothing
            self.path = Path(":memory:")
            self.db = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        else:
            check_own_dir(state_dir, make=True)
            self.path = state_dir / JOURNAL_NAME
            self.db = open_checked(self.path, full_check)
        self.db.execute("PRAGMA synchronous=NORMAL")
        with self._guard():
            _upgrade(self.db, self.path)

    @classmethod
    def in_memory(cls) -> JournalDB:
        return cls(None)

    @classmethod
    def read_only(cls, state_dir: Path) -> JournalDB:
        """For readers (`status`, `plan`), who may be another user in the root's group: never writes.

        mode=ro needs the WAL's -shm file, which a group reader cannot create once the writer has
        closed and removed it; with no writer left the file cannot change, so immutable=1 is safe."""
        path = state_dir / JOURNAL_NAME
        db = connect_read_only(path)
        if db.execute("PRAGMA user_version").fetchone()[0] != GENERATION:
            # A writer is creating or migrating it right now (a reader saw "no such table" there), or
            # it is older or newer than this datasetd: nothing in it can be read as this generation.
            db.close()
            return cls.in_memory()
        self = cls.__new__(cls)
        self.path = path
        self.db = db
        self.damaged = None
        self.writer = False
        return self

    def close(self) -> None:
        self.db.close()
        if self.damaged is not None and self.writer:
            move_aside(self.path, self.damaged)  # closed first: no connection writes through the old name
            self.writer = False  # once

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """A journal that cannot be written stops the run: nothing may proceed unrecorded."""
        try:
            yield
        except sqlite3.OperationalError as e:
            raise PermanentError(f"{self.path}: the journal cannot be written ({e}); free space on its "
                                 "filesystem (or fix its permissions) and run again: verified data is kept") from e
        except sqlite3.DatabaseError as e:  # damage the open check did not read: moved aside on close
            self.damaged = str(e)
            raise JournalDamaged(str(self.path), str(e)) from e

    def _read(self, sql: str, args: tuple[object, ...]) -> list[Any]:
        """Every read goes through here: a damaged page met while reading is damage, not a traceback."""
        with self._guard():
            return self.db.execute(sql, args).fetchall()

    @contextmanager
    def _tx(self, durable: bool = False) -> Iterator[sqlite3.Connection]:
        # durable: the commit reaches the disk before we return, because a delete follows it
        with self._guard():
            if durable:
                self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
                self.db.execute("COMMIT")
            except BaseException:
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                raise
            finally:
                if durable:
                    self.db.execute("PRAGMA synchronous=NORMAL")

    # ---- archives ------------------------------------------------------------------------

    def archive(self, component: str) -> ArchiveRow | None:
        rows = self._read(
            "SELECT path, size, mtime_ns, ino, dev, sha256, md5, indexed FROM archive WHERE component=?",
            (component,))
        if not rows:
            return None
        path, size, mtime_ns, ino, dev, sha256, md5, indexed = rows[0]
        return ArchiveRow(path, size, mtime_ns, ino, dev, sha256, md5, bool(indexed))

    def record_archive(self, component: str, row: ArchiveRow, units: list[UnitIndex] | None) -> None:
        with self._tx() as db:
            if units is not None:
                # A new index: whatever was extracted from an archive whose digest was never checked
                # is forgotten (its folders are compared with their tars again, never trusted).
                _forget_unproven(db, component)
                db.execute("DELETE FROM unit_index WHERE component=? AND archive_sha256=?",
                           (component, row.sha256))
            _insert_archive(db, component, row, units)

    def prove_archive(self, component: str, unproven_key: str, row: ArchiveRow,
                      units: list[UnitIndex]) -> list[str]:
        """The archive's digest matched its pin: the full index replaces the outer-headers one, and the
        units extracted meanwhile are keyed by the real digest from now on (one transaction: a crash
        leaves all or none). Returns those units."""
        with self._tx() as db:
            extracted = [r[0] for r in db.execute("SELECT unit FROM unit WHERE component=? AND archive_sha256=?",
                                                  (component, unproven_key))]
            db.execute("DELETE FROM unit_index WHERE component=? AND archive_sha256 IN (?, ?)",
                       (component, unproven_key, row.sha256))
            _insert_archive(db, component, row, units)
            db.execute("UPDATE unit SET archive_sha256=? WHERE component=? AND archive_sha256=?",
                       (row.sha256, component, unproven_key))
        return extracted

    def forget_unproven(self, component: str) -> list[str]:
        """The archive's digest broke its pin: forget its index and every unit extracted from it (returns
        their names); the next pass indexes the archive afresh."""
        with self._tx() as db:
            db.execute("DELETE FROM archive WHERE component=? AND sha256 LIKE ?", (component, f"{UNPROVEN}%"))
            return _forget_unproven(db, component)

    def unit_index(self, component: str, archive_sha256: str, unit: str | None = None) -> list[UnitIndex]:
        """The index of every unit (in name order), or of `unit` alone."""
        rows = self._read(
            "SELECT unit, offset, size, sha256, files, dirs, bytes, problem FROM unit_index "
            "WHERE component=? AND archive_sha256=? AND (? IS NULL OR unit=?) ORDER BY unit",
            (component, archive_sha256, unit, unit))
        return [UnitIndex(*r) for r in rows]

    # ---- units ---------------------------------------------------------------------------

    def units(self, component: str, unit: str | None = None) -> dict[str, UnitRow]:
        """Every unit's row, or the one of `unit` (the executor's refresh after a step: one row, not
        a thousand, read after each of a thousand steps)."""
        rows = self._read(
            "SELECT u.unit, u.state, u.archive_sha256, u.files, u.bytes, d.dirs FROM unit u "
            "LEFT JOIN unit_dirs d ON d.component=u.component AND d.unit=u.unit "
            "WHERE u.component=? AND (? IS NULL OR u.unit=?)", (component, unit, unit))
        return {r[0]: UnitRow(Journal(r[1]), r[2], r[3], r[4], r[5]) for r in rows}

    def files(self, component: str, unit: str) -> list[FileRecord]:
        rows = self._read("SELECT name, size, sha256 FROM file WHERE component=? AND unit=?",
                          (component, unit))
        return [(_name_out(r[0]), r[1], r[2]) for r in rows]

    def file_sizes(self, component: str, unit: str) -> dict[str, int]:
        rows = self._read("SELECT name, size FROM file WHERE component=? AND unit=?", (component, unit))
        return {_name_out(name): size for name, size in rows}

    def record_extracted(self, component: str, unit: str, archive_sha256: str,
                         files: list[FileRecord], stats: bytes | None = None, dirs: str | None = None) -> None:
        """A new record; `stats` and `dirs` are the fingerprints of its files and directories when
        they were just read back. Not durable (the group commit's flush and VERIFIED follow): a
        record lost to a crash leaves the folder to be adopted, one that survives is verified
        again by its bytes (an EXTRACTED unit is never trusted on its fingerprints)."""
        with self._tx() as db:
            db.execute("DELETE FROM file WHERE component=? AND unit=?", (component, unit))
            db.execute("DELETE FROM unit_dirs WHERE component=? AND unit=?", (component, unit))
            db.execute("DELETE FROM unit_stats WHERE component=? AND unit=?", (component, unit))
            if stats is not None:
                db.execute("INSERT INTO unit_stats VALUES (?,?,?)", (component, unit, stats))
            if dirs is not None:
                db.execute("INSERT INTO unit_dirs VALUES (?,?,?)", (component, unit, dirs))
            db.executemany("INSERT INTO file VALUES (?,?,?,?,?)",
                           [(component, unit, _name_in(n), s, d) for n, s, d in files])
            db.execute("INSERT OR REPLACE INTO unit (component, unit, archive_sha256, state, files, bytes, at) "
                       "VALUES (?,?,?,?,?,?,?)",
                       (component, unit, archive_sha256, Journal.EXTRACTED.value, len(files),
                        sum(f[1] for f in files), time.time()))

    def mark_verified(self, component: str, units: Iterable[str]) -> None:
        """Durable: once this returns, the executor may delete these units' tars."""
        with self._tx(durable=True) as db:
            # never a unit of an archive whose digest was not checked against its pin
            db.executemany("UPDATE unit SET state=?, at=? WHERE component=? AND unit=? AND archive_sha256 NOT LIKE ?",
                           [(Journal.VERIFIED.value, time.time(), component, u, f"{UNPROVEN}%") for u in units])

    def record_dirs(self, component: str, fingerprints: dict[str, str]) -> None:
        """Keep directory fingerprints of units just found intact. Not durable: a lost update only
        means the next no-op lists those units' files again."""
        with self._tx() as db:
            db.executemany("INSERT OR REPLACE INTO unit_dirs VALUES (?,?,?)",
                           [(component, unit, fp) for unit, fp in fingerprints.items()])

    def record_stats(self, component: str, unit: str, stats: bytes) -> None:
        """Keep the fingerprint a verification took of the unit's files (VerifyUnit)."""
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO unit_stats VALUES (?,?,?)", (component, unit, stats))

    def file_stats(self, component: str, unit: str) -> bytes | None:
        rows = self._read("SELECT stats FROM unit_stats WHERE component=? AND unit=?", (component, unit))
        return bytes(rows[0][0]) if rows else None

    def forget_unit(self, component: str, unit: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM unit_stats WHERE component=? AND unit=?", (component, unit))
            db.execute("DELETE FROM unit WHERE component=? AND unit=?", (component, unit))
            db.execute("DELETE FROM unit_dirs WHERE component=? AND unit=?", (component, unit))
            db.execute("DELETE FROM file WHERE component=? AND unit=?", (component, unit))

    # ---- steps: the record of work done, so a no-op can be proved ------------------------

    def step(self, component: str, unit: str, action: str, outcome: str, detail: str = "") -> None:
        with self._guard():
            self._step(component, unit, action, outcome, detail)

    def _step(self, component: str, unit: str, action: str, outcome: str, detail: str) -> None:
        self.db.execute("INSERT INTO step (at, component, unit, action, outcome, detail) VALUES (?,?,?,?,?,?)",
                        (time.time(), component, unit, action, outcome, detail))



def rebuilding(open_journal: Callable[[], JournalDB], run: Callable[[JournalDB], T]) -> T:
    """`run` over the journal; when it met damage the open check did not read (the journal moved
    itself aside on close), once more over a fresh one, which re-proves every unit."""
    for last in (False, True):
        journal = open_journal()
        try:
            result = run(journal)
        except JournalDamaged:
            if last:
                raise
            continue
        finally:
            journal.close()
        if last or journal.damaged is None:
            return result
    raise AssertionError("the second run returns or raises")


def _insert_archive(db: sqlite3.Connection, component: str, row: ArchiveRow, units: list[UnitIndex] | None) -> None:
    db.execute("INSERT OR REPLACE INTO archive VALUES (?,?,?,?,?,?,?,?,?,?)",
               (component, row.path, row.size, row.mtime_ns, row.ino, row.dev, row.sha256,
                row.md5, int(row.indexed), time.time()))
    if units is not None:
        db.executemany("INSERT INTO unit_index VALUES (?,?,?,?,?,?,?,?,?,?)",
                       [(component, row.sha256, u.name, u.offset, u.size, u.sha256, u.files, u.dirs,
                         u.bytes, u.problem) for u in units])


def _forget_unproven(db: sqlite3.Connection, component: str) -> list[str]:
    unproven = f"{UNPROVEN}%"
    units = [r[0] for r in db.execute("SELECT unit FROM unit WHERE component=? AND archive_sha256 LIKE ?",
                                      (component, unproven))]
    keys = [(component, u) for u in units]
    db.executemany("DELETE FROM unit WHERE component=? AND unit=?", keys)
    db.executemany("DELETE FROM unit_dirs WHERE component=? AND unit=?", keys)
    db.executemany("DELETE FROM unit_stats WHERE component=? AND unit=?", keys)
    db.executemany("DELETE FROM file WHERE component=? AND unit=?", keys)
    db.execute("DELETE FROM unit_index WHERE component=? AND archive_sha256 LIKE ?", (component, unproven))
    return units


def _name_in(name: str) -> str | bytes:
    """A member name as stored: text when it is valid UTF-8, else its exact bytes (a BLOB).

    Names that are not UTF-8 reach us as surrogate escapes (tarfile and os both use them);
    SQLite cannot store a lone surrogate as TEXT, and the bytes are what the file is called."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return name.encode("utf-8", "surrogateescape")
    return name


def _name_out(stored: str | bytes) -> str:
    return stored.decode("utf-8", "surrogateescape") if isinstance(stored, bytes) else stored


def _upgrade(db: sqlite3.Connection, path: Path) -> None:
    """Bring the journal to GENERATION, one transaction per step, or refuse a newer one."""
    found: int = db.execute("PRAGMA user_version").fetchone()[0]
    if found > GENERATION:
        raise PermanentError(f"{path}: journal generation {found} is newer than this datasetd knows "
                             f"({GENERATION}); upgrade datasetd, or move the journal aside to rebuild it")
    for generation in range(found, GENERATION):
        db.executescript(f"BEGIN IMMEDIATE;\n{_MIGRATIONS[generation]}\n"
                         f"PRAGMA user_version={generation + 1};\nCOMMIT;")
