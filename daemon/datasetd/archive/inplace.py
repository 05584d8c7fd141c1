"""A class tar read in place from a pinned archive, by position: headers by archive/ustar.py, bytes by pread.

Where it sits: archive/extract.py's extraction of a unit whose origin is a byte range of an
archive whose digest is (or is being) proved against its pin, so the range has no
digest of its own to check (headerindex gives it sha256 ""). Nothing then needs
every byte of the range to pass through a hashing stream: tarfile reads each
member's 512-byte header from a window onto the range and seeks past the data,
and each member's bytes are read with one `pread` per chunk straight from the
archive (no stream buffer copying the rest of itself on every read: tarfile's
stream mode cost ~10 % of a worker on 100 KB files). The end check is the
seekable one ProveArchive applies too: after the last member only zero blocks,
two at least, up to the range's end.
"""

from __future__ import annotations

import io
import os
import tarfile

from datasetd.core.model import Origin


def reads_in_place(origin: Origin) -> bool:
    """A class tar inside an archive with no digest of its own to check while it is read."""
    return not origin.loose and origin.offset > 0 and not origin.sha256


class RangeFile(io.RawIOBase):
    """A read-only, seekable window [start, start + size) of an open file, read with pread."""

    def __init__(self, fd: int, start: int, size: int) -> None:
        super().__init__()
        self._fd, self._start, self._size, self._pos = fd, start, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        n = max(0, min(len(b), self._size - self._pos))
        if n == 0:
            return 0
        got = os.preadv(self._fd, [memoryview(b)[:n]], self._start + self._pos)
        self._pos += got
        return got

    @property
    def size(self) -> int:
        return self._size

    def pread(self, n: int, offset: int) -> bytes:
        """`n` bytes at `offset` in the window (fewer at the file's end); the position is left as it is."""
        return os.pread(self._fd, n, self._start + offset)

    def member(self, info: tarfile.TarInfo) -> MemberBytes:
        """The data of one member of the tar in this window."""
        return MemberBytes(self._fd, self._start + info.offset_data,
                           max(0, min(info.size, self._size - info.offset_data)))


class MemberBytes:
    """`read(n)` of one member's bytes: one pread each, straight into the bytes returned. A member
    that runs past the window's end reads short, and the writer reports it truncated."""

    def __init__(self, fd: int, start: int, size: int) -> None:
        self._fd, self._pos, self._left = fd, start, size

    def read(self, n: int = -1, /) -> bytes:
        n = self._left if n < 0 else min(n, self._left)
        if n <= 0:
            return b""
        data = os.pread(self._fd, n, self._pos)
        self._pos += len(data)
        self._left = self._left - len(data) if data else 0
        return data
