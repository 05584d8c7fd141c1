"""The index pass: an archive's digests and each unit's place, members and size, before any write.

Runs inside worker processes: no journal, no logging. Every function here takes
plain arguments and returns plain data, so it can cross a process boundary. A
pinned tar of class tars is indexed by archive/headerindex.py instead (its outer
headers first, then one read that proves it); extraction is archive/extract.py.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import tarfile
import threading
from dataclasses import dataclass, replace
from pathlib import Path

from datasetd.archive.digest import hash_file
from datasetd.archive.indexprogress import ProgressFile
from datasetd.archive.tarread import decoding, decompressing, magic_bytes, reading, tally
from datasetd.archive.tarsafe import (
    HashingReader,
    TailCheck,
    class_tar_members,
    open_stream,
)
from datasetd.core.model import FLAT, UnitIndex
from datasetd.errors import CorruptArchive, PermanentError


@dataclass(frozen=True)
class IndexResult:
    size: int
    sha256: str
    md5: str | None  # computed only when the manifest pins one
    units: list[UnitIndex]
    mtime_ns: int
    ino: int
    dev: int


def index_archive(path: Path, unpack: str, max_expansion: int = 1000, md5: bool = False,
                  unit_digests: frozenset[str] | None = None, progress: Path | None = None) -> IndexResult:
    """Digests of the archive, and of the class tars in `unit_digests` (every unit when None), plus each
    unit's member count and size. Hostile members are found here, before any write.

    A unit read in place from a pinned archive needs no digest of its own: the archive's digest
    matched its pin, and its fingerprint (size, mtime, inode) is checked before every use. Only a
    loose class tar (split by hand) has to be compared with its byte range here; its sha256 is ""
    otherwise, and the extraction of an in-place unit then hashes each byte once, per member.

    `progress`, when given, is a file this call owns while it runs: the archive bytes done so far
    (the slower of the two readers), for status to show; removed at the end."""
    st = path.stat()
    stop = threading.Event()
    with ProgressFile(progress) as shown:
        return _index_archive(path, unpack, max_expansion, md5, unit_digests, st, stop, shown)


def _index_archive(path: Path, unpack: str, max_expansion: int, md5: bool, unit_digests: frozenset[str] | None,
                   st: os.stat_result, stop: threading.Event, shown: ProgressFile) -> IndexResult:
    # The archive's own digest comes from a second thread reading the same file: hashlib releases
    # the GIL, so it runs on another core while this thread parses headers and hashes class tars.
    # (md5 costs more CPU than sha256 here, 0.7 vs 1.1+ GB/s: only when a pin needs it.)
    with cf.ThreadPoolExecutor(1, thread_name_prefix="index-hash") as pool:
        whole = pool.submit(hash_file, path, md5=md5, stop=stop, progress=shown.hashed)
        try:
            units = _index_units(path, unpack, st.st_size * max_expansion, unit_digests, shown)
        except BaseException:
            stop.set()  # a refused archive: do not read the rest of it just to hash it
            raise
        digests = whole.result()
    after = path.stat()
    if (after.st_size, after.st_mtime_ns) != (st.st_size, st.st_mtime_ns) or digests.size != st.st_size:
        raise CorruptArchive(str(path), "changed while it was being read; wait until it is complete")
    # a flat unit's bytes are the whole archive: an unpinned one is re-checked against this digest
    # while extracting (its pin is the index itself); a pinned one was proved by its pin
    if unit_digests is None:
        units = [replace(u, sha256=digests.sha256) if u.name == FLAT else u for u in units]
    return IndexResult(digests.size, digests.sha256, digests.md5, units, st.st_mtime_ns, st.st_ino, st.st_dev)


def _index_units(path: Path, unpack: str, max_bytes: int, digests: frozenset[str] | None,
                 shown: ProgressFile) -> list[UnitIndex]:
    with path.open("rb", buffering=0) as raw:
        reader = shown.parser = HashingReader(raw, None, ())
        if unpack == "class-tars":
            return _index_class_tars(reader, str(path), digests)
        if unpack == "tar":
            return [_index_flat(reader, str(path), max_bytes, magic_bytes(path))]
        return []


def _index_class_tars(reader: HashingReader, archive: str, digests: frozenset[str] | None) -> list[UnitIndex]:
    units: list[UnitIndex] = []
    tail = TailCheck(reader)
    with reading(archive), open_stream(tail, archive, compressed=False) as outer:
        for name, member in class_tar_members(outer, archive):
            units.append(_index_class(outer, member, name, archive, digests is None or name in digests))
        tail.check_end(archive, outer.offset)
        reader.drain()
    return units


def _index_class(outer: tarfile.TarFile, member: tarfile.TarInfo, name: str, archive: str,
                 digest: bool) -> UnitIndex:
    source = outer.extractfile(member)
    assert source is not None
    inner_reader = HashingReader(source, member.size, ("sha256",) if digest else ())
    label = f"{archive}:{member.name}"
    files = dirs = total = 0
    problem = None
    tail = TailCheck(inner_reader)
    try:
        with reading(label), open_stream(tail, label, compressed=False) as inner:
            files, dirs, total = tally(inner, label, member.size)
            tail.check_end(label, inner.offset)
    except PermanentError as e:
        problem = str(e)  # this class is refused; the others go on
    except (tarfile.TarError, EOFError) as e:
        problem = str(CorruptArchive(label, f"unreadable class tar: {e}"))
    inner_reader.drain()
    return UnitIndex(name, member.offset_data, member.size, inner_reader.hexdigest() if digest else "",
                     files, dirs, total, problem)


def _index_flat(reader: HashingReader, archive: str, max_bytes: int, magic: bytes) -> UnitIndex:
    with reading(archive), decoding(archive):
        tail = TailCheck(decompressing(reader, magic))
        with open_stream(tail, archive, compressed=False) as tf:
            files, dirs, total = tally(tf, archive, max_bytes)
            tail.check_end(archive, tf.offset)
        reader.drain()
    return UnitIndex(FLAT, 0, reader.count, "", files, dirs, total)  # sha256: the archive's, filled in later
