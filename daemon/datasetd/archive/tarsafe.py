"""What a tar member may be before datasetd writes it: the strict rules, in one place.

Only regular files and directories, with relative names made of ordinary
components. These rules refuse everything tarfile's own `data_filter` refuses
(absolute paths are refused where it strips the slash; '..' anywhere, links and
special files are refused outright), which tests/test_member_rules.py checks
over thousands of generated members; the filter itself no longer runs on every
member (two realpath walks, ~20 µs each time against ~2 µs for these rules,
paid twice per member of a 1.28 M-file archive). The files themselves are
created with O_EXCL|O_NOFOLLOW in a directory datasetd just made, so nothing on
disk can redirect them.
"""

from __future__ import annotations

import hashlib
import io
import math
import re
import tarfile
from collections.abc import Iterator
from typing import IO, Protocol, cast

from datasetd.errors import CorruptArchive, HostileArchive, PermanentError

MAX_NAME_BYTES = 255  # one path component (NAME_MAX)
MAX_PATH_BYTES = 4000  # whole relative name, below PATH_MAX with room for the target dir
MAX_MTIME = 2.0**62  # seconds either side of 1970; beyond time_t os.utime raises instead of refusing
MAX_META_BYTES = 1 << 20  # a pax or GNU long-name record, which tarfile reads whole into memory
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
CLASS_TAR_RE = re.compile(r"^(?!Z_)(?!\.)([A-Za-z0-9][A-Za-z0-9._-]{0,200})\.tar$")


TOP = ""  # safe_name of the archive's own top directory ('.' or './'): nothing to extract


def safe_name(archive: str, member: tarfile.TarInfo) -> str:
    """The member's name, normalised ('./a' -> 'a', './' -> TOP); HostileArchive if it could escape
    or mislead. A backslash is an ordinary character on POSIX, as GNU tar treats it."""
    raw = member.name
    if raw == "" or _CONTROL.search(raw):
        raise HostileArchive(archive, raw, "empty name or control characters in the name")
    if raw.startswith("/"):
        raise HostileArchive(archive, raw, "absolute path")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if not parts:
        if member.isdir() and raw.startswith("."):  # `tar -cf x.tar -C dir .` writes './' first
            return TOP
        raise HostileArchive(archive, raw, "a file named only '.' or '/' would be the target itself")
    if any(p == ".." for p in parts):
        raise HostileArchive(archive, raw, "'..' in the path escapes the target directory")
    name = "/".join(parts)
    if raw.isascii() and len(raw) <= MAX_NAME_BYTES:
        return name  # one byte a character: neither a component nor the name can be too long
    if any(len(p.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES for p in parts):
        raise HostileArchive(archive, raw, f"a path component is longer than {MAX_NAME_BYTES} bytes")
    if len(name.encode("utf-8", "surrogateescape")) > MAX_PATH_BYTES:
        raise HostileArchive(archive, raw, f"name longer than {MAX_PATH_BYTES} bytes")
    return name




def check_member(archive: str, member: tarfile.TarInfo) -> str:
    """Validate type and name; returns the safe relative name."""
    name = safe_name(archive, member)
    if not (member.isreg() or member.isdir()):
        raise HostileArchive(archive, member.name, f"{_kind(member)} members are not extracted")
    if member.issparse():
        raise HostileArchive(archive, member.name, "sparse members are not supported")
    if member.size < 0:
        raise HostileArchive(archive, member.name, "negative size")
    if not math.isfinite(member.mtime) or abs(member.mtime) > MAX_MTIME:
        raise HostileArchive(archive, member.name, f"modification time {member.mtime} is out of range")
    return name


def outer_name(member: tarfile.TarInfo) -> str:
    """A top-level member's name without the './' that `tar -C dir .` puts in front."""
    name = member.name
    while name.startswith("./"):
        name = name[2:]
    return name


def _kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return "symlink"
    if member.islnk():
        return "hard link"
    if member.ischr() or member.isblk():
        return "device"
    if member.isfifo():
        return "FIFO"
    return f"type {member.type!r}"


class HashingReader(io.RawIOBase):
    """Reads exactly `size` bytes of `f` (or to EOF if size is None), hashing them on the way."""

    def __init__(self, f: IO[bytes], size: int | None, algos: tuple[str, ...] = ("sha256",)) -> None:
        super().__init__()
        self._f = f
        self.remaining = size
        self.hashes = {a: hashlib.new(a) for a in algos}
        self.count = 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if self.remaining is not None:
            n = self.remaining if n < 0 else min(n, self.remaining)
            if n == 0:
                return b""
        data = self._f.read(n)
        for h in self.hashes.values():
            h.update(data)
        self.count += len(data)
        if self.remaining is not None:
            self.remaining -= len(data)
        return data

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def drain(self, chunk: int = 1 << 20) -> None:
        """Read to the end (tar padding after the end-of-archive blocks) so the digest covers all."""
        while self.read(chunk):
            pass

    def hexdigest(self, algo: str = "sha256") -> str:
        return self.hashes[algo].hexdigest()


# tarfile's stream reader copies the unread rest of its buffer on every read() (a 512-byte
# header included): with 1 MiB that is up to 1 MiB of memcpy per member. 64 KiB measured best.
TAR_BUFSIZE = 64 * 1024


class Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


class TailCheck(io.RawIOBase):
    """Passes bytes through and remembers where the last non-zero byte ended: the end-of-archive check."""

    def __init__(self, f: Readable) -> None:
        super().__init__()
        self._f = f
        self.count = 0
        self.data_end = 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        kept = len(data.rstrip(b"\0"))
        if kept:
            self.data_end = self.count + kept
        self.count += len(data)
        return data

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def check_end(self, archive: str, end: int) -> None:
        """`end` is where tarfile stopped reading members. A tar ends with two zero blocks and only
        zeros after them; tarfile also stops, silently, at a cut header or a damaged one."""
        while self.read(1 << 20):
            pass
        if self.data_end > end or self.count < end + 2 * tarfile.BLOCKSIZE:
            raise CorruptArchive(archive, f"no end-of-archive marker after byte {end}: truncated or damaged")


_META_TYPES = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE,
               tarfile.SOLARIS_XHDTYPE)


class BoundedTarInfo(tarfile.TarInfo):
    """Refuses a pax or long-name record before tarfile reads it whole into memory."""

    def _proc_member(self, tf: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in _META_TYPES and self.size > MAX_META_BYTES:
            # The archive's name is not known here: tarread.reading adds it.
            raise HostileArchive("", self.name, f"a {self.size}-byte extended header (at most {MAX_META_BYTES})")
        return super()._proc_member(tf)  # type: ignore[misc,no-any-return]


def not_a_tar(archive: str, problem: object) -> CorruptArchive:
    """What a tar whose first header cannot be read is refused with, however it is read."""
    return CorruptArchive(archive, f"not a readable tar: {problem}")


def open_seekable(f: IO[bytes], archive: str) -> tarfile.TarFile:
    """An uncompressed tar on a seekable file: tarfile reads each header and seeks past the data."""
    try:
        return tarfile.open(fileobj=f, mode="r:", tarinfo=BoundedTarInfo)
    except tarfile.TarError as e:
        raise not_a_tar(archive, e) from e


def check_zero_tail(f: IO[bytes], archive: str, end: int, size: int) -> None:
    """TailCheck's rule on a seekable file: after `end` (where tarfile stopped reading members) come
    at least two zero blocks and only zeros to the `size`-th byte."""
    problem = CorruptArchive(archive, f"no end-of-archive marker after byte {end}: truncated or damaged")
    if size < end + 2 * tarfile.BLOCKSIZE:
        raise problem
    f.seek(end)
    left = size - end
    while left:
        data = f.read(min(left, 1 << 20))
        if not data or data.strip(b"\0"):
            raise problem
        left -= len(data)


def open_stream(reader: Readable, archive: str, compressed: bool = True) -> tarfile.TarFile:
    """A streaming reader: members in order, no seeking, any compression tarfile knows (or none)."""
    fileobj = cast(IO[bytes], reader)  # tarfile only calls read()
    try:
        if compressed:
            return tarfile.open(fileobj=fileobj, mode="r|*", bufsize=TAR_BUFSIZE, tarinfo=BoundedTarInfo)
        return tarfile.open(fileobj=fileobj, mode="r|", bufsize=TAR_BUFSIZE, tarinfo=BoundedTarInfo)
    except tarfile.TarError as e:
        raise not_a_tar(archive, e) from e


def class_tar_members(outer: tarfile.TarFile, archive: str) -> Iterator[tuple[str, tarfile.TarInfo]]:
    """(class name, member) for each class tar at the top of a tar of class tars: the one rule both
    index passes (unpack's full one, headerindex's outer headers) apply. Directory entries (`./`)
    are skipped; anything else but a uniquely named plain `NAME.tar` is refused."""
    seen: set[str] = set()
    for member in outer:
        if member.isdir():
            continue
        match = CLASS_TAR_RE.fullmatch(outer_name(member))
        if member.isreg() and not member.name.endswith(".tar") and not seen:
            # The first member is a plain file: a flat tar (a val or devkit tar), not a tar of class tars.
            raise PermanentError(f"{archive}: first member {member.name[:80]!r} is a plain file, so this is a "
                                 'flat tar, not a tar of class tars: set unpack = "tar" for this component')
        if not member.isreg() or match is None or match.group(1) in seen:
            raise HostileArchive(archive, member.name, "a class-tars archive may hold only "
                                 "uniquely named plain 'NAME.tar' members at its top level")
        seen.add(match.group(1))
        yield match.group(1), member
