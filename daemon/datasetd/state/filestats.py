"""A unit's file fingerprint: (inode, size, ctime_ns) of every file, taken when the unit is verified.

Taken in the worker that verified the unit (archive/verify.py), kept in the journal (one compact
blob per unit), it lets a delete (archive/verify.py `reprove_then_unlink`) prove a folder with one
`lstat` per file instead of re-reading its bytes: a write, a truncate, a chmod or a replaced file
all move a file's ctime, and ctime cannot be set from user space (`touch` and `os.utime` set it to
now). Where anything differs, or a stamp is too recent to be trusted, the delete re-hashes.

The blob also keeps the unit's directories as they were when it was verified, so `verify` can name
a directory the archive did not have (an extra empty one holds no file to miss).
"""

from __future__ import annotations

import os
import stat
import struct
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from datasetd import platform
from datasetd.core.model import FileRecord
from datasetd.state.fswalk import DirStamp, FileStat, dir_stamps_text, list_files

# A file changed within the same timestamp tick as the stat that fingerprinted it keeps its ctime
# ("racy git"). Linux stamps files from its coarse clock (platform.stamp_clock_ns): a stat taken once
# that clock has moved past a file's ctime sees every later change. A filesystem with whole-second
# stamps (ctime_ns a multiple of 1e9) would need a second and more: its fresh files are not trusted.
RACY_COARSE_NS = 2_000_000_000
# Version 1 blobs were taken on the fine clock and trusted files stamped 20 ms before it or earlier.
_V1_RACY_NS = 20_000_000
_VERSION = 2  # taken on the stamp clock: a file stamped in the tick of its stat is stat'ed again
# Taken on a filesystem that stamps every change after a stat (platform.stamps_every_change): no
# stamp it recorded can survive a later change, whatever the clock read, so every file is trusted.
_VERSION_EVERY_CHANGE = 3
_SETTLE_ROUNDS = 3  # re-stats of files still too fresh before giving up (then: no fingerprint, re-hash)
_HEAD = struct.Struct("<BqI")  # version, when the stats were taken (ns), number of files
_ENTRY = struct.Struct("<QQq")  # inode, size, ctime_ns, in the order of the sorted file names


@dataclass
class Stats:
    files: dict[str, FileStat] = field(default_factory=dict)
    dirs: list[str] = field(default_factory=list)  # relative, the folder itself excluded
    odd: bool = False  # a link, a special file or an unreadable directory: nothing to vouch for
    taken_ns: int = 0  # the stamp clock just before the stats were taken
    stamps: list[DirStamp] = field(default_factory=list)  # each directory's (rel, ino, mtime, ctime)
    stamps_ok: bool = True  # False: a directory changed while settling, its stamps vouch for nothing


@dataclass(frozen=True)
class Fingerprint:
    version: int
    taken_ns: int
    stats: list[FileStat]
    dirs: list[str]


def stat_tree(folder: Path) -> Stats:
    """One `scandir` per directory and one `lstat` per file (fswalk's walk); no file is opened."""
    taken_ns = platform.stamp_clock_ns()
    listing = list_files(folder, stats=True)
    return Stats(listing.stats, sorted(listing.dir_names()), bool(listing.problems), taken_ns, listing.dirs)


def _racy(version: int, taken_ns: int, ctime_ns: int) -> bool:
    """Whether a change after the stat could have kept this ctime: trust no such file."""
    if version == _VERSION_EVERY_CHANGE:
        return False
    if ctime_ns % 1_000_000_000 == 0:
        return taken_ns - ctime_ns < RACY_COARSE_NS
    if version == 1:
        return taken_ns - ctime_ns < _V1_RACY_NS
    return ctime_ns >= taken_ns


def _fresh(stats: Stats) -> list[str]:
    """Files stamped at or after the clock reading their stat followed, on a fine-stamped filesystem."""
    return [n for n, (_i, _s, c) in stats.files.items()
            if c % 1_000_000_000 and _racy(_VERSION, stats.taken_ns, c)]


def _fresh_dirs(stats: Stats) -> list[DirStamp]:
    """Directories stamped at or after the clock reading their walk followed (still in its tick)."""
    return [d for d in stats.stamps if stats.stamps_ok and max(d[2], d[3]) >= stats.taken_ns]


def _settle(folder: Path, stats: Stats) -> Stats | None:
    """Stat the fresh files (and list the fresh directories) again once the stamp clock has passed
    their stamps (a tick at most, one wait for both), so a change in that tick cannot hide. The rest
    keep their first stat: any change after it already moves their stamps. None when files keep
    changing (nothing is then vouched for); a directory that changed only withdraws the directory
    stamps (`stamps_ok`)."""
    for _round in range(_SETTLE_ROUNDS):
        fresh, fresh_dirs = _fresh(stats), _fresh_dirs(stats)
        if not fresh and not fresh_dirs:
            return stats
        newest = max([stats.files[n][2] for n in fresh] + [max(d[2], d[3]) for d in fresh_dirs])
        tick = platform.stamp_tick_ns()
        while (now := platform.stamp_clock_ns()) <= newest:
            if newest - now > 4 * tick:
                return None  # stamped ahead of the clock (a clock stepped back): vouch for nothing
            time.sleep(min(tick, newest - now + 1) / 1e9)
        stats.taken_ns = now
        for name in fresh:
            try:
                st = os.lstat(folder / name)
            except OSError:
                return None
            if not stat.S_ISREG(st.st_mode):
                return None
            stats.files[name] = (st.st_ino, st.st_size, st.st_ctime_ns)
        # Once withdrawn, stays withdrawn: a later round (files still changing) lists no directory.
        stats.stamps_ok = stats.stamps_ok and all(_listed_again(folder, stats, d) for d in fresh_dirs)
    return stats if not _fresh(stats) else None


def _listed_again(folder: Path, stats: Stats, was: DirStamp) -> bool:
    """Whether a directory stamped in the tick of its walk still has that stamp and, listed again
    now that the clock has passed it, the same entries: then any later change moves its stamp."""
    rel = was[0]
    try:
        st = os.lstat(folder / rel)
        now = {e.name for e in os.scandir(folder / rel)}
    except OSError:
        return False
    same = (st.st_ino, st.st_mtime_ns, st.st_ctime_ns) == was[1:]
    return same and now == {n.rpartition("/")[2] for n in (*stats.files, *stats.dirs) if n.rpartition("/")[0] == rel}


def take(folder: Path, records: list[FileRecord]) -> bytes | None:
    """The fingerprint of a folder that holds exactly `records`, or None when it does not.

    Must be taken before (or while) the bytes it vouches for are hashed: a change after this stat
    moves ctime past it. Files stamped within the stamp clock's current tick are stat'ed again once
    it has ticked (platform.stamp_tick_ns: 4 ms here), so a change in that tick cannot hide."""
    return take_with_dirs(folder, records)[0]


def take_with_dirs(folder: Path, records: list[FileRecord]) -> tuple[bytes | None, str | None]:
    """`take`, and the directory stamps of the same walk (fswalk.unchanged_since's fingerprint, the
    one a no-op checks with a stat per directory), or None where a directory would not vouch for
    its entries: one stamped in the clock's current tick, once ticked, is listed again
    (`_listed_again`), so an entry added in that tick cannot hide behind an unchanged stamp. On a
    whole-second filesystem the stamps are left to the observation (fswalk's one-second rule).
    Where the filesystem stamps every change after a stat (platform.stamps_every_change, probed when
    the unit's .partial folder was made) the first stat is final: nothing is stat'ed or listed again."""
    every_change = platform.stamps_every_change_known(folder)
    stats = stat_tree(folder) if every_change else _settle(folder, stat_tree(folder))
    names = sorted(name for name, _size, _digest in records)
    if stats is None or stats.odd or len(names) != len(stats.files) or any(n not in stats.files for n in names):
        return None, None
    coarse = not every_change and any(d[2] % 1_000_000_000 == 0 or d[3] % 1_000_000_000 == 0 for d in stats.stamps)
    version = _VERSION_EVERY_CHANGE if every_change else _VERSION
    return _blob(stats, names, version), None if coarse or not stats.stamps_ok else dir_stamps_text(stats.stamps)


def _blob(stats: Stats, names: list[str], version: int) -> bytes:
    head = _HEAD.pack(version, stats.taken_ns, len(names))
    body = b"".join(_ENTRY.pack(*stats.files[n]) for n in names)
    dirs = "\0".join(stats.dirs).encode("utf-8", "surrogateescape")
    return zlib.compress(head + body + dirs)


def decode(blob: bytes) -> Fingerprint | None:
    try:
        raw = zlib.decompress(blob)
        version, taken_ns, count = _HEAD.unpack_from(raw)
        end = _HEAD.size + count * _ENTRY.size
        if version not in (1, _VERSION, _VERSION_EVERY_CHANGE) or len(raw) < end:
            return None
        stats = [_ENTRY.unpack_from(raw, _HEAD.size + i * _ENTRY.size) for i in range(count)]
        tail = raw[end:].decode("utf-8", "surrogateescape")
    except (zlib.error, struct.error):
        return None
    return Fingerprint(version, taken_ns, stats, tail.split("\0") if tail else [])


def unchanged(folder: Path, records: list[FileRecord], blob: bytes | None) -> bool:
    """Whether every file of `records` is the very file fingerprinted, unmodified since, and the
    folder holds nothing else (no other file, link or directory). False means: re-hash."""
    fp = decode(blob) if blob is not None else None
    names = sorted(name for name, _size, _digest in records)
    if fp is None or len(fp.stats) != len(names):
        return False
    try:
        if stat.S_ISLNK(os.lstat(folder).st_mode):
            return False
    except OSError:
        return False
    now = stat_tree(folder)
    if now.odd or now.dirs != fp.dirs or len(now.files) != len(names):
        return False
    sizes = {name: size for name, size, _digest in records}
    for name, was in zip(names, fp.stats, strict=True):
        if now.files.get(name) != was or was[1] != sizes[name] or _racy(fp.version, fp.taken_ns, was[2]):
            return False
    return True


def expected_dirs(names: Iterable[str], blob: bytes | None) -> set[str]:
    """The unit's directories: as fingerprinted at verification, else those its files imply."""
    fp = decode(blob) if blob is not None else None
    if fp is not None:
        return set(fp.dirs)
    implied: set[str] = set()
    for name in names:
        parts = name.split("/")[:-1]
        implied.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
    return implied
