"""The index passes of a pinned tar of class tars, read in place: outer headers first, then the full one.

Where it sits: IndexArchive for a class-tars component whose manifest pins the
archive's digest (and asks for no `expect` or `classes`, which need member counts
before any work) runs `index_headers`: one 512-byte read and a seek per class tar
give each class its place and size, so extraction can start at once (it checks
every member's name and type itself; tarfile's filter runs here, and a class it
refuses is forgotten and removed before it could be committed). ProveArchive then runs
`index_members` alongside the extraction: one sequential read of the archive,
hashed front to back by one thread while this one checks and counts each class
tar's members from their headers right behind it (those pages were just read:
no second read from the disk). Its verdict against the pin gates every commit
of a unit as verified. Only a class tar split out by hand (a loose `W.tar`) has
its byte range hashed on its own, since that loose copy is compared with it.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import tarfile
import threading
from pathlib import Path
from typing import IO, cast

from datasetd import platform
from datasetd.archive.digest import hash_file
from datasetd.archive.indexprogress import ProgressFile
from datasetd.archive.inplace import RangeFile
from datasetd.archive.tarread import reading, tally
from datasetd.archive.tarsafe import (
    HashingReader,
    check_zero_tail,
    class_tar_members,
    open_seekable,
)
from datasetd.archive.unpack import IndexResult
from datasetd.archive.ustar import Members
from datasetd.core.model import UnitIndex
from datasetd.errors import CorruptArchive, PermanentError


class _Position:
    """The outer tar's reading position, as the progress file's `count`."""

    def __init__(self) -> None:
        self.outer: tarfile.TarFile | None = None

    @property
    def count(self) -> int:
        return self.outer.offset if self.outer is not None else 0


def index_headers(path: Path, unit_digests: frozenset[str], progress: Path | None = None) -> IndexResult:
    """Each class tar's place and size, from the outer headers alone; sha256 "" (not hashed yet).

    `unit_digests`: the class tars found loose in `into`, whose byte ranges are hashed (and so read)."""
    st = path.stat()
    archive = str(path)
    position = _Position()
    with ProgressFile(progress) as shown, path.open("rb", buffering=0) as raw:
        platform.random_hint(raw.fileno())
        shown.parser = position
        shown.hashed(st.st_size)  # nothing is hashed: the progress is the parser's alone
        with reading(archive):
            outer = position.outer = open_seekable(raw, archive)
            with outer:
                # members not counted yet (ProveArchive counts them): a class tar holds at most its size
                units = [UnitIndex(name, m.offset_data, m.size, _range_digest(outer, m) if name in unit_digests
                                   else "", 0, 0, m.size) for name, m in class_tar_members(outer, archive)]
                check_zero_tail(raw, archive, outer.offset, st.st_size)
    _unchanged(path, st)
    return IndexResult(st.st_size, "", None, units, st.st_mtime_ns, st.st_ino, st.st_dev)


def index_members(path: Path, unit_digests: frozenset[str], *, md5: bool, stop: threading.Event) -> IndexResult:
    """The full index of a tar of class tars (digest, every member checked and counted) in one read."""
    st = path.stat()
    archive = str(path)
    hashed = _Frontier()
    with cf.ThreadPoolExecutor(1, thread_name_prefix="prove-hash") as pool:
        whole = pool.submit(hash_file, path, md5=md5, stop=stop, progress=hashed.advance)
        whole.add_done_callback(hashed.finish)
        try:
            with path.open("rb", buffering=0) as raw, reading(archive):
                platform.random_hint(raw.fileno())  # behind the hash every page is cached; else read no more
                with open_seekable(raw, archive) as outer:
                    units = []
                    for name, member in class_tar_members(outer, archive):
                        hashed.reach(member.offset_data + member.size)
                        units.append(_count_members(raw.fileno(), outer, member, name, archive,
                                                    name in unit_digests))
                    hashed.reach(st.st_size)
                    check_zero_tail(raw, archive, outer.offset, st.st_size)
        except BaseException:
            stop.set()  # a refused archive: do not read the rest of it just to hash it
            raise
        digests = whole.result()
    _unchanged(path, st)
    if digests.size != st.st_size:
        raise CorruptArchive(archive, "changed while it was being read; wait until it is complete")
    return IndexResult(digests.size, digests.sha256, digests.md5, units, st.st_mtime_ns, st.st_ino, st.st_dev)


def _unchanged(path: Path, st: os.stat_result) -> None:
    after = path.stat()
    if (after.st_size, after.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
        raise CorruptArchive(str(path), "changed while it was being read; wait until it is complete")


def _count_members(fd: int, outer: tarfile.TarFile, member: tarfile.TarInfo, name: str, archive: str,
                   digest: bool) -> UnitIndex:
    """One class tar's members checked (names, types, duplicates, end marker) and counted from their
    headers, read at their offsets (archive/ustar.py, as the extraction reads them), as
    `unpack._index_class` does."""
    label = f"{archive}:{member.name}"
    files = dirs = total = 0
    problem = None
    window = RangeFile(fd, member.offset_data, member.size)  # the class tar's bytes in the archive
    try:
        with reading(label):
            inner = Members(window, label)
            files, dirs, total = tally(inner, label, member.size)
            check_zero_tail(cast(IO[bytes], window), label, inner.offset, member.size)
    except PermanentError as e:
        problem = str(e)  # this class is refused; the others go on
    except (tarfile.TarError, EOFError) as e:
        problem = str(CorruptArchive(label, f"unreadable class tar: {e}"))
    return UnitIndex(name, member.offset_data, member.size, _range_digest(outer, member) if digest else "",
                     files, dirs, total, problem)


def _range_digest(outer: tarfile.TarFile, member: tarfile.TarInfo) -> str:
    """sha256 of a class tar's whole byte range (a loose copy of it is compared with this)."""
    source = outer.extractfile(member)
    assert source is not None
    reader = HashingReader(source, None)
    reader.drain()
    return reader.hexdigest()


class _Frontier:
    """How far the hashing thread has read; the header parse waits to stay right behind it."""

    def __init__(self) -> None:
        self._done = 0
        self._cond = threading.Condition()

    def advance(self, done: int) -> None:
        with self._cond:
            self._done = done
            self._cond.notify_all()

    def finish(self, _future: object = None) -> None:
        self.advance(1 << 62)  # the hash ended (or failed): nothing is left to wait for

    def reach(self, offset: int) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._done >= offset)
