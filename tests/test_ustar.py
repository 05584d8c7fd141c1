"""archive/ustar.py reads every tar exactly as tarfile does: the same members, the same end, the same error.

The header parser replaces tarfile on the in-place path (the proof pass and the extraction of a
class tar read from its archive), so any difference would let a member through one pass and not
the other, or change what a hostile archive is refused with. Hypothesis builds real tars with
tarfile's writer (ustar with split prefixes, GNU long names and base-256 numbers, pax records;
files, directories, links, FIFOs), then damages them (a byte changed, the checksum recomputed or
not; odd but well-formed fields patched in: V7 directories, prefixes, sizes on directories,
negative and spaced numbers, base-256; the tar cut short), and the
old reading (tarfile through `open_seekable`) and the new one must agree on all of it.
"""

from __future__ import annotations

import io
import tarfile
import tempfile

from hypothesis import given, settings
from hypothesis import strategies as st

from datasetd.archive import ustar
from datasetd.archive.inplace import RangeFile
from datasetd.archive.tarread import reading
from datasetd.archive.tarsafe import BoundedTarInfo, open_seekable
from datasetd.errors import DatasetdError

LABEL = "train.tar:n01440764.tar"
NAMES = ["n01440764_10026.JPEG", "a/b/c.JPEG", "d" * 99, "e/" * 60 + "f.JPEG", "g" * 120, "é.JPEG",
         "./h.JPEG", "dir/", "x\\y", "k" * 300]
TYPES = [tarfile.REGTYPE, tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.FIFOTYPE]
FORMATS = [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT]

member_specs = st.lists(st.tuples(
    st.sampled_from(NAMES), st.sampled_from(TYPES), st.sampled_from([0, 1, 511, 512, 513, 3000]),
    st.sampled_from([0, 1_300_000_000, 8**11 + 5]),  # the last needs base-256 (GNU) or pax
    st.sampled_from([0, 1000, 8**7 + 1]),
), min_size=0, max_size=6)


def _write(specs: list[tuple[str, bytes, int, int, int]], fmt: int) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tf:
        for name, typ, size, mtime, uid in specs:
            info = tarfile.TarInfo(name)
            info.type, info.mtime, info.uid = typ, mtime, uid
            info.linkname = "target" if typ == tarfile.SYMTYPE else ""
            info.size = size if typ == tarfile.REGTYPE else 0
            try:
                tf.addfile(info, io.BytesIO(b"\x01" * info.size) if info.isreg() else None)
            except ValueError:
                pass  # a name or number this format cannot hold: the member is left out
    return out.getvalue()


# Odd but well-formed header fields, written over a header and resealed with a right checksum.
PATCHES = [
    (156, b"\0"),  # the old V7 regular type: a directory when its name ends in '/'
    (0, b"olddir/\0"), (0, b"\0"),  # a trailing slash, an empty name
    (345, b"pre/fix\0"), (345, b"pre/\0"),  # a ustar prefix
    (124, b"00000001000\0"), (124, b"-0000000001\0"), (124, b" 17 \0"),  # sizes: one block, negative, spaced
    (136, b"-1\0"), (100, b"0o644\0"), (100, b"1_0\0"), (100, b"9\0"),  # what int(x, 8) takes or refuses
    (156, b"5"), (156, b"7"), (156, b"x"), (124, b"\x80" + bytes(10) + b"\x01"),  # types; base-256
]


def _damage(data: bytes, how: str, where: int, byte: int) -> bytes:
    buf = bytearray(data)
    if not buf:
        return data
    pos = where % len(buf)
    if how == "cut":
        return bytes(buf[:pos])
    start = pos - pos % 512
    if how == "patch":  # two patches over one member's header
        with tarfile.open(fileobj=io.BytesIO(data)) as tf:
            headers = [m.offset for m in tf] or [0]
        start = headers[where % len(headers)]
        for at, value in (PATCHES[byte % len(PATCHES)], PATCHES[(byte // len(PATCHES)) % len(PATCHES)]):
            buf[start + at:start + at + len(value)] = value
    else:
        buf[pos] = byte
    if how in ("reseal", "patch"):  # changed by someone who fixed the checksum: parsed as tarfile parses it
        block = buf[start:start + 512]
        block[148:156] = b" " * 8
        block[148:156] = b"%06o\0 " % sum(block)
        buf[start:start + 512] = block
    return bytes(buf)


def _fields(m: tarfile.TarInfo) -> tuple[object, ...]:
    return (m.name, m.type, m.size, m.mtime, m.mode, m.uid, m.gid, m.offset, m.offset_data, m.linkname,
            m.uname, m.gname, m.devmajor, m.devminor, m.chksum, m.pax_headers)


def _walk(window: RangeFile, fast: bool) -> tuple[object, ...]:
    seen: list[tuple[object, ...]] = []
    end, error = None, None
    try:
        with reading(LABEL):
            if not fast:
                with open_seekable(window, LABEL) as tf:  # type: ignore[arg-type]
                    seen.extend(_fields(m) for m in tf)
                    end = tf.offset
            else:
                walk = ustar.Members(window, LABEL)
                seen.extend(_fields(m) for m in walk)
                end = walk.offset
    except DatasetdError as e:
        error = str(e)
    return seen, end, error


def _both(data: bytes) -> tuple[tuple[object, ...], tuple[object, ...]]:
    with tempfile.TemporaryFile() as f:
        f.write(b"\xaa" * 1024 + data + b"\xbb" * 700)  # the tar lies inside a larger file, as in an archive
        f.flush()
        fd = f.fileno()
        old = _walk(RangeFile(fd, 1024, len(data)), fast=False)
        new = _walk(RangeFile(fd, 1024, len(data)), fast=True)
        return old, new


@settings(max_examples=1000, deadline=None)
@given(member_specs, st.sampled_from(FORMATS), st.sampled_from(["none", "byte", "reseal", "patch", "patch", "cut"]),
       st.integers(0, 1 << 16), st.integers(0, 255))
def test_every_tar_reads_as_tarfile_reads_it(specs: list[tuple[str, bytes, int, int, int]], fmt: int,
                                             how: str, where: int, byte: int) -> None:
    data = _write(specs, fmt)
    if how != "none":
        data = _damage(data, how, where, byte)
    old, new = _both(data)
    assert new == old


def test_plain_headers_are_parsed_here_and_the_rest_by_tarfile() -> None:
    """Not just equal: the fast path is taken for plain members, and tarfile from a pax header on."""
    plain = _write([("n01440764_1.JPEG", tarfile.REGTYPE, 10, 0, 0), ("sub/", tarfile.DIRTYPE, 0, 0, 0)],
                   tarfile.USTAR_FORMAT)
    block = plain[:512]
    info = ustar.parse(block)
    assert info is not None and isinstance(info, BoundedTarInfo) and info.name == "n01440764_1.JPEG"
    pax = _write([("é" * 120, tarfile.REGTYPE, 10, 0, 0)], tarfile.PAX_FORMAT)
    try:
        ustar.parse(pax[:512])
    except ustar.NotPlain:
        pass
    else:
        raise AssertionError("a pax header was parsed as a plain one")
    old, new = _both(plain[:1536] + pax)  # two plain members (header, data, header), a pax one, the end
    assert new == old and len(new[0]) == 3 and new[2] is None  # type: ignore[arg-type]


def test_a_member_whose_data_runs_past_the_end_is_the_same_error() -> None:
    data = _write([("a.JPEG", tarfile.REGTYPE, 3000, 0, 0), ("b.JPEG", tarfile.REGTYPE, 10, 0, 0)],
                  tarfile.USTAR_FORMAT)
    old, new = _both(data[:1024])
    assert new == old and "unexpected end of data" in str(new[2])
