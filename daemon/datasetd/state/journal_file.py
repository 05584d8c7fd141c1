"""The journal's SQLite file: opened checked, read without writing, moved aside when damaged.

Used by state.journal (JournalDB opens through here) and by `verify`, which judges the file
whole. A journal that is not a database, is cut short or fails its check is moved
aside (`journal.sqlite.damaged-<time>`) and started afresh: being a cache,
losing it only means every unit is re-proved against its archive. Opening checks
what a no-op reads whole (the header, the schema, the unit tables: milliseconds
at ImageNet scale); the full `PRAGMA quick_check` reads every page, so it runs
where reading everything is the job anyway (`verify`, the daemon's deep verify).
Damage found later, while reading the file, stats or step table, raises JournalDamaged
and the journal is moved aside when it is closed: the caller starts afresh.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from datasetd import logs

# What every open checks page by page: the tables a no-op apply reads whole. `file` (a row per
# file: most of the pages at ImageNet scale), `unit_stats` (a stamp per file, read only before a
# delete) and `step` (grows with every run) are left to
# verify's full check, or to the read that meets their damage (JournalDamaged).
_CHECKED_AT_OPEN = ("archive", "unit_index", "unit", "unit_dirs")


def damage(path: Path, writer: bool = False, full: bool = False) -> str | None:
    """Why the SQLite file at `path` cannot be trusted, or None when its check passes.

    SQLite itself refuses a wrong header (magic, page size) and a file shorter than the page count
    its header records; on top of that the schema and the tables a no-op reads whole are checked
    page by page (`full`: every page, `PRAGMA quick_check`). The `writer` (holding the root's lock)
    opens it read-write, so SQLite recovers the WAL a killed run left; a reader's view of a hot WAL
    may be stale, never a reason to move the journal aside. Only "not a database" or "malformed" is
    damage: a busy, locked or unreadable file is not."""
    try:
        db = (sqlite3.connect(path, isolation_level=None) if writer else connect_read_only(path))
        try:
            rows = _check(db, full)
        finally:
            db.close()
    except sqlite3.OperationalError:
        return None  # not a verdict on the bytes: opening it for real reports this error
    except sqlite3.DatabaseError as e:
        return str(e)
    return None if all(r == ("ok",) for r in rows) else "; ".join(str(r[0]) for r in rows if r != ("ok",))[:500]


def _check(db: sqlite3.Connection, full: bool) -> list[Any]:
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if full:
        return db.execute("PRAGMA quick_check").fetchall()
    return [row for t in _CHECKED_AT_OPEN if t in tables  # an older generation lacks some
            for row in db.execute(f"PRAGMA quick_check({t})").fetchall()]


def connect_read_only(path: Path) -> sqlite3.Connection:
    """mode=ro, falling back to immutable=1 when SQLite cannot open the WAL's -shm (see JournalDB.read_only)."""
    uri = path.absolute().as_uri()
    try:
        db = sqlite3.connect(f"{uri}?mode=ro", uri=True, isolation_level=None, check_same_thread=False)
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.OperationalError:
        return sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True, isolation_level=None,
                               check_same_thread=False)
    return db


def open_checked(path: Path, full: bool) -> sqlite3.Connection:
    """Connect to the journal, first moving a damaged one aside so a fresh one is rebuilt."""
    if path.exists() and (problem := damage(path, writer=True, full=full)) is not None:
        move_aside(path, problem)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    return db


def move_aside(path: Path, problem: str) -> None:
    """Rename a damaged journal (and its WAL) out of the way; the next open starts a fresh one.
    Only the holder of the root's lock, with no connection open on it."""
    aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%dT%H%M%S')}")
    for suffix in ("", "-wal", "-shm"):
        # rename, never unlink: the damaged file stays for a post-mortem. No fsync: a crash
        # before the rename is durable just finds the same damage again on the next start.
        if os.path.lexists(f"{path}{suffix}"):
            os.rename(f"{path}{suffix}", f"{aside}{suffix}")
    logs.get().warning("journal.rebuilt", path=str(path), moved_to=str(aside), problem=problem)

