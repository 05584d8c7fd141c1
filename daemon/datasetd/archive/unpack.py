"""The strict extractor and the index pass. Runs inside worker processes: no journal, no logging.

Every function here takes plain arguments and returns plain data, so it can
cross a process boundary. Writing is done only under a fresh `.W.partial/`
directory that this process created, with O_EXCL|O_NOFOLLOW on every file,
so nothing in an archive can reach outside it.
"""

from __future__ import annotations

import bz2
import concurrent.futures as cf
import contextlib
import hashlib
import lzma
import os
import shutil
import tarfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, cast

from isal import igzip, isal_zlib

from datasetd.archive.digest import hash_file
from datasetd.archive.indexprogress import ProgressFile
from datasetd.archive.inplace import RangeFile, reads_in_place
from datasetd.archive.tarsafe import (
    TOP,
    HashingReader,
    Readable,
    TailCheck,
    check_member,
    check_zero_tail,
    class_tar_members,
    open_seekable,
    open_stream,
)
from datasetd.core.model import CHUNK, FLAT, FileRecord, Origin, UnitIndex
from datasetd.errors import CorruptArchive, DigestMismatch, HostileArchive, PermanentError, TemporaryError
from datasetd.state.fswalk import list_files
from datasetd.state.safedir import check_own_dir

# isal's stubs declare `error` as an instance; it is the exception class bad deflate data raises.
ISAL_ERROR = cast("type[Exception]", isal_zlib.error)
_O_CREATE = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


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
            return [_index_flat(reader, str(path), max_bytes, _magic(path))]
        return []


def _index_class_tars(reader: HashingReader, archive: str, digests: frozenset[str] | None) -> list[UnitIndex]:
    units: list[UnitIndex] = []
    tail = TailCheck(reader)
    with _reading(archive), open_stream(tail, archive, compressed=False) as outer:
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
        with _reading(label), open_stream(tail, label, compressed=False) as inner:
            files, dirs, total = _tally(inner, label, member.size)
            tail.check_end(label, inner.offset)
    except PermanentError as e:
        problem = str(e)  # this class is refused; the others go on
    except (tarfile.TarError, EOFError) as e:
        problem = str(CorruptArchive(label, f"unreadable class tar: {e}"))
    inner_reader.drain()
    return UnitIndex(name, member.offset_data, member.size, inner_reader.hexdigest() if digest else "",
                     files, dirs, total, problem)


def _magic(path: Path) -> bytes:
    with path.open("rb") as f:
        return f.read(6)


def _decompressing(reader: HashingReader, magic: bytes) -> Readable:
    """File readers that, unlike tarfile's stream, check the trailer (length, CRC), so a compressed
    tar cut short is an error rather than a shorter tar. gzip through ISA-L (python-isal's
    IGzipFile, the stdlib GzipFile's drop-in): 1,255 MB/s against zlib's 541 MB/s on a 1 GiB
    stream of image-like data on the 2-core development machine (manifests/README.md)."""
    if magic.startswith(b"\x1f\x8b"):
        return cast(Readable, igzip.IGzipFile(fileobj=reader, mode="rb"))  # type: ignore[no-untyped-call]
    if magic.startswith(b"BZh"):
        return bz2.BZ2File(reader)
    if magic.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(cast(IO[bytes], reader))
    return reader


@contextlib.contextmanager
def _decoding(archive: str) -> Iterator[None]:
    try:
        yield
    except (OSError, lzma.LZMAError, ISAL_ERROR) as e:  # bad gzip/bz2/xz data, or a read error
        raise CorruptArchive(archive, f"unreadable compressed data ({e})") from e


def _index_flat(reader: HashingReader, archive: str, max_bytes: int, magic: bytes) -> UnitIndex:
    with _reading(archive), _decoding(archive):
        tail = TailCheck(_decompressing(reader, magic))
        with open_stream(tail, archive, compressed=False) as tf:
            files, dirs, total = _tally(tf, archive, max_bytes)
            tail.check_end(archive, tf.offset)
        reader.drain()
    return UnitIndex(FLAT, 0, reader.count, "", files, dirs, total)  # sha256: the archive's, filled in later


def _tally(tf: tarfile.TarFile, label: str, max_bytes: int) -> tuple[int, int, int]:
    """Check every member (names, types, duplicates) and count files, dirs and bytes."""
    files = dirs = total = 0
    names: set[str] = set()
    for m in tf:
        rel = check_member(label, m)
        if rel == TOP:
            continue
        if rel in names:
            raise HostileArchive(label, m.name, "duplicate member name")
        names.add(rel)
        files, dirs, total = files + m.isreg(), dirs + m.isdir(), total + m.size * m.isreg()
        if total > max_bytes:
            raise HostileArchive(label, m.name, f"members add up to more than {max_bytes} bytes "
                                 "(a decompression bomb, or a header that lies about its size)")
    return files, dirs, total


@contextlib.contextmanager
def _reading(archive: str) -> Iterator[None]:
    try:
        yield
    except HostileArchive as e:
        if e.archive:
            raise
        raise HostileArchive(archive, e.member, e.reason) from e  # raised by a header: name the archive
    except (tarfile.TarError, EOFError) as e:
        raise CorruptArchive(archive, f"unreadable tar ({e}); it may be truncated") from e


# ---- extraction ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Extracted:
    files: list[FileRecord]
    dirs: int
    # Read back while written (every chunk compared with the bytes hashed on the way in, through the
    # same descriptor while its pages are hot) and the folder's member set checked: what VerifyUnit
    # proves, so only the group commit's flush stands between this unit and VERIFIED.
    read_back: bool = False


def extract_unit(origin: Origin, folder: Path, partial: Path, old: Path, expected_bytes: int) -> Extracted:
    """Extract the unit's tar into `partial`, then rename it to `folder`.

    No fsync here: nothing is trusted until the folder was read back (here, for a unit read in
    place from the archive; by VerifyUnit after the Z_ marker for a loose class tar) and the
    executor flushed the filesystem (one syncfs for many units) before it records VERIFIED.
    A crash before that leaves the tar in place and the unit re-done.
    """
    check_own_dir(folder.parent, make=True)  # `into` itself a link would send every write outside root
    _clear(partial)
    _clear(old)
    partial.mkdir()  # fails if something raced us into the name: never write into foreign dirs
    try:
        result = _extract_into(origin, partial, expected_bytes)
    except BaseException:
        _clear(partial)
        raise
    if os.path.lexists(folder):
        # The folder failed its check: move it aside first so `folder` is never a mix.
        folder.rename(old)
    partial.rename(folder)
    _clear(old)
    return result


def _extract_into(origin: Origin, partial: Path, expected_bytes: int) -> Extracted:
    label = _label(origin)
    read_back = not origin.loose
    files: list[FileRecord] = []
    dirs = 0
    seen: set[str] = set()
    with _unit_members(origin) as (tf, data_of):
        for member in tf:
            rel = check_member(label, member, library_filter=False)
            if rel == TOP:
                continue
            if rel in seen:
                raise HostileArchive(label, member.name, "duplicate member name")
            seen.add(rel)
            if member.isdir():
                _mkdirs(partial, rel, label, member.name)
                dirs += 1
                continue
            if member.size > expected_bytes:
                raise HostileArchive(label, member.name, f"claims {member.size} bytes, more than the "
                                     f"{expected_bytes} the index counted for the whole unit")
            files.append(_write_member(data_of(member), member, partial, rel, label, read_back))
    if read_back:
        _check_member_set(partial, files)
    return Extracted(files, dirs, read_back)


def _check_member_set(partial: Path, files: list[FileRecord]) -> None:
    """The folder holds exactly the files written, and nothing that is not a file or a directory."""
    listing = list_files(partial, sizes=False)
    if listing.problems or set(listing.files) != {f[0] for f in files}:
        odd = listing.problems or sorted(set(listing.files) ^ {f[0] for f in files})
        raise TemporaryError(f"{partial}: not the member set just written ({odd[0]}); extracting again", 0)


def _write_member(source: Readable, member: tarfile.TarInfo, partial: Path, rel: str,
                  label: str, read_back: bool) -> FileRecord:
    parent = rel.rpartition("/")[0]
    if parent:
        _mkdirs(partial, parent, label, member.name)
    h = hashlib.sha256()
    try:
        fd = os.open(partial / rel, _O_CREATE, 0o644)
    except (FileExistsError, NotADirectoryError, IsADirectoryError) as e:
        raise HostileArchive(label, member.name, "collides with another member") from e
    try:
        written = 0
        while chunk := source.read(CHUNK):
            h.update(chunk)
            view = memoryview(chunk)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            # One more byte than written: a file longer than what was written shows up too.
            if read_back and os.pread(fd, len(chunk) + 1, written) != chunk:
                raise TemporaryError(f"{partial / rel}: read back differs from what was written; "
                                     "extracting again", 0)
            written += len(chunk)
        if written != member.size:
            raise CorruptArchive(label, f"member {member.name!r} is truncated ({written} of {member.size} bytes)")
        os.utime(fd, ns=(int(member.mtime * 1e9),) * 2)
    finally:
        os.close(fd)
    return (rel, written, h.hexdigest())


def _mkdirs(root: Path, rel: str, label: str, member: str) -> None:
    try:
        (root / rel).mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as e:
        raise HostileArchive(label, member, "directory collides with a file member") from e
    if (root / rel).is_symlink():  # cannot happen: we create no links; belt and braces
        raise HostileArchive(label, member, "path passes through a symlink")


@contextlib.contextmanager
def _open_origin(origin: Origin) -> Iterator[HashingReader]:
    with origin.path.open("rb", buffering=0) as raw:
        if origin.offset:
            raw.seek(origin.offset)
        # no digest to check (an in-place unit of a pinned archive): count the bytes, hash none
        yield HashingReader(raw, origin.size, ("sha256",) if origin.sha256 else ())


DataOf = Callable[[tarfile.TarInfo], Readable]  # a member's bytes, from the tar being read


@contextlib.contextmanager
def _unit_members(origin: Origin) -> Iterator[tuple[tarfile.TarFile, DataOf]]:
    """The members of a unit's tar, read from its origin, with a reader of each one's bytes. On a
    clean exit the rest of the origin is checked: drained and its digest compared (a unit is good
    only if every byte of its tar was), or, read in place, zeros only after the last member."""
    label = _label(origin)
    if reads_in_place(origin):
        with _in_place_members(origin, label) as members:
            yield members
        return
    with _open_origin(origin) as reader, _reading(label), _decoding(label):
        # A flat tar may be compressed (class tars inside an archive never are): decompress in the
        # stream, never into an uncompressed copy on disk.
        magic = _magic(origin.path) if origin.offset == 0 else b""
        with open_stream(_decompressing(reader, magic), label, compressed=False) as tf:
            yield tf, _stream_data(tf)
        reader.drain()
    _check_origin_digest(origin, reader)


def _stream_data(tf: tarfile.TarFile) -> DataOf:
    def data_of(member: tarfile.TarInfo) -> Readable:
        source = tf.extractfile(member)
        assert source is not None  # only regular members are read
        return source
    return data_of


@contextlib.contextmanager
def _in_place_members(origin: Origin, label: str) -> Iterator[tuple[tarfile.TarFile, DataOf]]:
    fd = os.open(origin.path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        window = RangeFile(fd, origin.offset, origin.size)
        with _reading(label), open_seekable(cast(IO[bytes], window), label) as tf:
            yield tf, window.member
            check_zero_tail(cast(IO[bytes], window), label, tf.offset, origin.size)
    finally:
        os.close(fd)


def _check_origin_digest(origin: Origin, reader: HashingReader) -> None:
    if reader.count != origin.size:
        raise CorruptArchive(_label(origin), f"ended after {reader.count} of {origin.size} bytes")
    if origin.sha256 and reader.hexdigest() != origin.sha256:
        raise DigestMismatch(_label(origin), "sha256", origin.sha256, reader.hexdigest(),
                             "the archive changed since it was indexed; remove it to fetch or index again")


def _label(origin: Origin) -> str:
    return str(origin.path) if origin.loose else f"{origin.path}@{origin.offset}"


def _clear(path: Path) -> None:
    """Remove a leftover partial/old dir, or whatever stood in a folder's place (a file, a link, a
    folder with mode 000). Never follows a symlink: a link is unlinked, its target untouched."""
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        path.unlink()
    elif path.exists():
        try:
            shutil.rmtree(path)
        except PermissionError:
            _open_up(path)
            shutil.rmtree(path)


clear = _clear  # also the executor's, for a folder extracted from an archive that then broke its pin


def _open_up(top: Path) -> None:
    """Give the owner rwx on every directory under `top` (ours, below `into`) so it can be removed."""
    os.chmod(top, 0o700)
    for dirpath, dirnames, _files in os.walk(top):
        for d in dirnames:
            child = os.path.join(dirpath, d)
            if not os.path.islink(child):
                os.chmod(child, 0o700)


# ---- adoption ------------------------------------------------------------------------------


def adopt_unit(origin: Origin, folder: Path, partial: Path, old: Path,
               expected_bytes: int) -> tuple[bool, Extracted]:
    """Compare a folder of unknown provenance with its tar, byte for byte. On a match the
    folder is adopted as is (its digests come from the bytes on disk); otherwise it is
    replaced by a fresh extraction. Returns (adopted, result)."""
    check_own_dir(folder.parent)
    if folder.is_symlink():
        # a link in place of the folder is never adopted: it is replaced (the link, not its target)
        return False, extract_unit(origin, folder, partial, old, expected_bytes)
    try:
        return True, _compare(origin, folder)
    except _Differs:
        return False, extract_unit(origin, folder, partial, old, expected_bytes)


class _Differs(Exception):
    pass


def _compare(origin: Origin, folder: Path) -> Extracted:
    label = _label(origin)
    files: list[FileRecord] = []
    dirs = 0
    with _unit_members(origin) as (tf, data_of):
        for member in tf:
            rel = check_member(label, member, library_filter=False)
            if member.isdir():
                dirs += rel != TOP
                continue
            digest = _same_file(data_of(member), folder / rel, member.size, hashlib.sha256())
            files.append((rel, member.size, digest))
    on_disk = list_files(folder)
    if on_disk.problems or set(on_disk.files) != {f[0] for f in files}:
        raise _Differs
    return Extracted(files, dirs)


def _same_file(src: Readable, path: Path, size: int, h: hashlib._Hash) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise _Differs from e
    with os.fdopen(fd, "rb") as disk:
        if os.fstat(disk.fileno()).st_size != size:
            raise _Differs
        while chunk := src.read(CHUNK):
            if disk.read(len(chunk)) != chunk:
                raise _Differs
            h.update(chunk)
    return h.hexdigest()
