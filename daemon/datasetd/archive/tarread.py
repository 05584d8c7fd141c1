"""Reading a tar the same way in every pass: compression by magic bytes, errors named by archive.

Where it sits: the index passes (archive/unpack.py, archive/headerindex.py) and the
extraction (archive/extract.py) read tars through these, so a truncated or hostile
tar is the same one-line error wherever it is met, and every member is counted by
the one rule (`tally`).
"""

from __future__ import annotations

import contextlib
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, cast

from datasetd.archive.tarsafe import TOP, HashingReader, Readable, check_member
from datasetd.errors import CorruptArchive, HostileArchive


def magic_bytes(path: Path) -> bytes:
    with path.open("rb") as f:
        return f.read(6)


def decompressing(reader: HashingReader, magic: bytes) -> Readable:
    """File readers that, unlike tarfile's stream, check the trailer (length, CRC), so a compressed
    tar cut short is an error rather than a shorter tar. gzip through ISA-L (python-isal's
    IGzipFile, the stdlib GzipFile's drop-in): 1,255 MB/s against zlib's 541 MB/s on a 1 GiB
    stream of image-like data on the 2-core development machine (manifests/README.md).

    The codecs are imported here, for the compressed tar that needs one: at the top of the module
    isal and gzip were 7 modules and three shared objects read on every cold start of an apply
    (bz2 and lzma come with shutil all the same)."""
    if magic.startswith(b"\x1f\x8b"):
        from isal import igzip
        return cast(Readable, igzip.IGzipFile(fileobj=reader, mode="rb"))  # type: ignore[no-untyped-call]
    if magic.startswith(b"BZh"):
        import bz2
        return bz2.BZ2File(reader)
    if magic.startswith(b"\xfd7zXZ\x00"):
        import lzma
        return lzma.LZMAFile(cast(IO[bytes], reader))
    return reader


def _codec_errors() -> tuple[type[Exception], ...]:
    """What bad gzip or xz data raises (bz2 raises OSError), imported only once something failed."""
    import lzma

    from isal import isal_zlib
    # isal's stubs declare `error` as an instance; it is the exception class bad deflate data raises.
    return (lzma.LZMAError, cast("type[Exception]", isal_zlib.error))


@contextlib.contextmanager
def decoding(archive: str) -> Iterator[None]:
    try:
        yield
    except OSError as e:  # a read error, or bad bz2 data
        raise CorruptArchive(archive, f"unreadable compressed data ({e})") from e
    except Exception as e:
        if not isinstance(e, _codec_errors()):
            raise
        raise CorruptArchive(archive, f"unreadable compressed data ({e})") from e


def unique_members(tf: Iterable[tarfile.TarInfo], label: str) -> Iterator[tuple[str, tarfile.TarInfo]]:
    """(safe relative name, member) of every member but the tar's own top directory, each checked
    (names, types) and refused when its name came before: the one rule of index and extraction."""
    names: set[str] = set()
    for m in tf:
        rel = check_member(label, m)
        if rel == TOP:
            continue
        if rel in names:
            raise HostileArchive(label, m.name, "duplicate member name")
        names.add(rel)
        yield rel, m


def tally(tf: Iterable[tarfile.TarInfo], label: str, max_bytes: int) -> tuple[int, int, int]:
    """Check every member (names, types, duplicates) and count files, dirs and bytes."""
    files = dirs = total = 0
    for _rel, m in unique_members(tf, label):
        files, dirs, total = files + m.isreg(), dirs + m.isdir(), total + m.size * m.isreg()
        if total > max_bytes:
            raise HostileArchive(label, m.name, f"members add up to more than {max_bytes} bytes "
                                 "(a decompression bomb, or a header that lies about its size)")
    return files, dirs, total


@contextlib.contextmanager
def reading(archive: str) -> Iterator[None]:
    try:
        yield
    except HostileArchive as e:
        if e.archive:
            raise
        raise HostileArchive(archive, e.member, e.reason) from e  # raised by a header: name the archive
    except (tarfile.TarError, EOFError) as e:
        raise CorruptArchive(archive, f"unreadable tar ({e}); it may be truncated") from e
