"""A tar's members read from their headers at their offsets, parsed here where a header is plain.

Where it sits: the proof pass (archive/headerindex.py) counts every class tar's members,
and the extraction of a unit read in place (archive/extract.py) walks them again. Both
read a class tar through a RangeFile window onto the archive, where tarfile spends
most of a member's cost on its own machinery (two struct unpacks of the header for its
checksum, a one-byte read before each header to check the previous member's end, the
stream layers): ~27 % of the proof pass and ~8 % of a worker on ImageNet-sized files.

A plain header (a regular file or a directory, octal numbers, no pax or GNU
extension) is parsed here with exactly tarfile's rules (`TarInfo.frombuf` and
`_proc_builtin`: the same fields, the same checksum, the same errors, the same
silent stop at a damaged header past the first). At the first header that is not
plain, tarfile itself takes over from that header on, with its own offset set
there, so everything unusual (pax, long names, links, sparse files, base-256
numbers) is tarfile's, as before. The member rules (tarsafe.check_member) apply to
what either yields.
"""

from __future__ import annotations

import tarfile
import zlib
from collections.abc import Iterator
from typing import IO, cast

from datasetd.archive.inplace import RangeFile
from datasetd.archive.tarsafe import BoundedTarInfo, not_a_tar, open_seekable

_BLOCK = tarfile.BLOCKSIZE
_ZEROS = bytes(_BLOCK)
_PLAIN = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE)
_NUMBERS = ((100, 108), (108, 116), (116, 124), (124, 136), (136, 148), (329, 337), (337, 345))
_CODING = tarfile.ENCODING, "surrogateescape"  # what tarfile.open reads names with by default


class _Invalid(Exception):
    """tarfile's InvalidHeaderError: past the first header, the walk stops there (tarfile's rule)."""


class NotPlain(Exception):
    """A header this module leaves to tarfile."""


class Members:
    """The members of the tar in `window`, in order; `offset` is where the walk stopped (tarfile's
    `TarFile.offset`: the end-of-archive check starts there). Walked inside tarread.reading, like
    a TarFile: a tarfile error raised here is named and worded there."""

    def __init__(self, window: RangeFile, archive: str) -> None:
        self._window, self._archive = window, archive
        self.offset = 0

    def __iter__(self) -> Iterator[tarfile.TarInfo]:
        while True:
            try:
                member = self._next()
            except NotPlain:
                yield from self._by_tarfile()
                return
            if member is None:
                return
            yield member

    def _next(self) -> tarfile.TarInfo | None:
        offset, size = self.offset, self._window.size
        if offset > size:  # the last member's data runs past the end (tarfile's one-byte read fails)
            raise tarfile.ReadError("unexpected end of data")  # worded by tarread.reading, as tarfile's
        buf = self._window.pread(min(_BLOCK, size - offset), offset)
        try:
            member = parse(buf)
        except _Invalid as e:
            if offset == 0:
                raise not_a_tar(self._archive, e) from None
            return None  # tarfile stops at a damaged header; the end-of-archive check names it
        if member is None:
            return None
        member.offset, member.offset_data = offset, offset + _BLOCK
        self.offset = offset + _BLOCK + (-(-member.size // _BLOCK) * _BLOCK if member.isreg() else 0)
        return member

    def _by_tarfile(self) -> Iterator[tarfile.TarInfo]:
        """tarfile from the header at `offset` on, exactly as if it had read every header before."""
        with open_seekable(cast(IO[bytes], self._window), self._archive) as tf:
            if self.offset:
                tf.next()  # the first member, read again by open(): already yielded
                tf.offset = self.offset
            while (member := tf.next()) is not None:
                yield member
                self.offset = tf.offset
            self.offset = tf.offset


def parse(buf: bytes) -> tarfile.TarInfo | None:
    """One plain header as tarfile's frombuf + _proc_builtin make it (offsets left to the caller);
    None at an all-zero block (the end); _Invalid where tarfile's frombuf raises (a short or empty
    block, a bad number or checksum), NotPlain where the header is one this module leaves to tarfile."""
    if len(buf) < _BLOCK:  # empty or cut short: tarfile stops there (and refuses it at offset 0)
        raise _Invalid("truncated header" if buf else "empty file")
    if buf == _ZEROS:
        return None
    if buf[156:157] not in _PLAIN:
        raise NotPlain
    chksum = _octal(buf[148:156])
    unsigned = 256 + _byte_sum(buf) - sum(buf[148:156])
    if chksum != unsigned and chksum != unsigned - 256 * sum(b >= 128 for b in buf[:148] + buf[156:]):
        raise _Invalid("bad checksum")
    mode, uid, gid, size, mtime, devmajor, devminor = [_octal(buf[a:b]) for a, b in _NUMBERS]
    if min(mode, uid, gid, size, mtime) < 0:
        raise NotPlain  # tarfile's own handling of a negative number
    info = BoundedTarInfo(_text(buf[0:100]))
    info.mode, info.uid, info.gid, info.size, info.mtime = mode, uid, gid, size, mtime
    info.chksum, info.type, info.devmajor, info.devminor = chksum, buf[156:157], devmajor, devminor
    info.linkname, info.uname, info.gname = _text(buf[157:257]), _text(buf[265:297]), _text(buf[297:329])
    if info.type == tarfile.AREGTYPE and info.name.endswith("/"):
        info.type = tarfile.DIRTYPE  # the old V7 way to write a directory
    if info.type == tarfile.DIRTYPE:
        info.name = info.name.rstrip("/")
    prefix = _text(buf[345:500])
    if prefix:
        info.name = prefix + "/" + info.name
    if info.type == tarfile.DIRTYPE:
        info.name = info.name.rstrip("/")  # again, as _proc_builtin does after frombuf
    return info


def _byte_sum(buf: bytes) -> int:
    """sum(buf) of a 512-byte block in C: Adler-32's low half is 1 + the sum of the bytes modulo
    65521, and a 256-byte half sums to at most 65280, so each half's is exact. `sum(buf)` walks the
    block as Python ints: ~3 us of a header's ~13 us, paid twice per file (proof pass, extraction)."""
    return (zlib.adler32(buf[:256]) & 0xFFFF) + (zlib.adler32(buf[256:]) & 0xFFFF) - 2


def _text(field: bytes) -> str:
    return field.partition(b"\0")[0].decode(*_CODING)


def _octal(field: bytes) -> int:
    """tarfile's nti for an octal field; a base-256 one is tarfile's to read."""
    if field[0] in (0o200, 0o377):
        raise NotPlain
    digits = field.partition(b"\0")[0]
    if not digits:
        return 0  # all NULs (GNU tar's device numbers): what strip() or "0" makes of it
    try:
        if digits.isdigit():  # ASCII 0-9 only, as tar writers write them: decoding and strip change nothing
            return int(digits, 8)
        return int(digits.decode("ascii").strip() or "0", 8)
    except ValueError:
        raise _Invalid("invalid header") from None
