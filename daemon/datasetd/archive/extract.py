"""The strict extractor, and adoption of a folder found on disk. Runs inside worker processes.

Every function here takes plain arguments and returns plain data, so it can
cross a process boundary. Writing is done only under a fresh `.W.partial/`
directory that this process created, with O_EXCL|O_NOFOLLOW on every file,
so nothing in an archive can reach outside it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, cast

from datasetd import platform
from datasetd.archive.inplace import RangeFile, reads_in_place
from datasetd.archive.tarread import decoding, decompressing, magic_bytes, reading, unique_members
from datasetd.archive.tarsafe import (
    TOP,
    HashingReader,
    Readable,
    check_member,
    check_zero_tail,
    open_stream,
)
from datasetd.archive.ustar import Members
from datasetd.core.model import CHUNK, FileRecord, Origin
from datasetd.errors import CorruptArchive, DigestMismatch, HostileArchive, TemporaryError
from datasetd.state.fswalk import list_files
from datasetd.state.safedir import check_own_dir

_O_CREATE = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


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
    # Probed once per filesystem, here where a crash leaves nothing the next run does not clear; the
    # fingerprint taken after the read-back (state/filestats.py) reads the verdict.
    platform.stamps_every_change(partial)
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
    with _unit_members(origin) as (tf, data_of):
        for rel, member in unique_members(tf, label):
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
        fd = os.open(f"{os.fspath(partial)}/{rel}", _O_CREATE, 0o644)  # a str: no Path built per file
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
def _unit_members(origin: Origin) -> Iterator[tuple[Iterable[tarfile.TarInfo], DataOf]]:
    """The members of a unit's tar, read from its origin, with a reader of each one's bytes. On a
    clean exit the rest of the origin is checked: drained and its digest compared (a unit is good
    only if every byte of its tar was), or, read in place, zeros only after the last member."""
    label = _label(origin)
    if reads_in_place(origin):
        with _in_place_members(origin, label) as members:
            yield members
        return
    with _open_origin(origin) as reader, reading(label), decoding(label):
        # A flat tar may be compressed (class tars inside an archive never are): decompress in the
        # stream, never into an uncompressed copy on disk.
        magic = magic_bytes(origin.path) if origin.offset == 0 else b""
        with open_stream(decompressing(reader, magic), label, compressed=False) as tf:
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
def _in_place_members(origin: Origin, label: str) -> Iterator[tuple[Iterable[tarfile.TarInfo], DataOf]]:
    fd = os.open(origin.path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        window = RangeFile(fd, origin.offset, origin.size)
        with reading(label):
            members = Members(window, label)
            yield members, window.member
            check_zero_tail(cast(IO[bytes], window), label, members.offset, origin.size)
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
            rel = check_member(label, member)
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
