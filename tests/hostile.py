"""Builders of hostile tar archives: every header byte chosen by the test, nothing left to a real tar tool.

    tar([regular("a.JPEG", b"..."), symlink("link", "/elsewhere"), regular("link/evil")])
    class_archive({"good.tar": tar(...), "../x.tar": tar(...)})   # outer tar of class tars
    compress(tar(...), "gz")

Members are written with tarfile's own header encoder (so checksums are right)
but their data is laid out here, so a header may lie about its size, a name
may hold bytes tarfile would never write, and an archive may stop anywhere.

The second half runs datasetd on them (`Site`, `apply`) and reads back what it
left: a snapshot of a tree, the files of a folder, the journal's rows.
"""

from __future__ import annotations

import bz2
import contextlib
import datetime
import gzip
import hashlib
import io
import json
import lzma
import os
import sqlite3
import stat
import tarfile
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

BLOCK = 512
MTIME = 1_340_000_000
END = b"\0" * (2 * BLOCK)  # the end-of-archive marker: two zero blocks


@dataclass(frozen=True)
class Member:
    """One tar member as it will be written: `size` overrides the header's size field (a lie)."""

    name: str
    data: bytes = b""
    type: bytes = tarfile.REGTYPE
    linkname: str = ""
    size: int | None = None
    mtime: float = MTIME
    mode: int = 0o644
    pax: Mapping[str, str] = field(default_factory=dict)  # extra pax records; forces PAX format


def regular(name: str, data: bytes = b"x", **kw: object) -> Member:
    return Member(name, data, **kw)  # type: ignore[arg-type]


def directory(name: str) -> Member:
    return Member(name, type=tarfile.DIRTYPE, mode=0o755)


def symlink(name: str, target: str) -> Member:
    return Member(name, type=tarfile.SYMTYPE, linkname=target, mode=0o777)


def hardlink(name: str, target: str) -> Member:
    return Member(name, type=tarfile.LNKTYPE, linkname=target)


def device(name: str, kind: bytes = tarfile.CHRTYPE) -> Member:
    return Member(name, type=kind, mode=0o666)


def fifo(name: str) -> Member:
    return Member(name, type=tarfile.FIFOTYPE)


def header(m: Member, fmt: int = tarfile.GNU_FORMAT) -> bytes:
    """The header block(s) of `m`: GNU longname or pax extension blocks included."""
    info = tarfile.TarInfo(m.name)
    info.type = m.type
    info.linkname = m.linkname
    info.size = m.size if m.size is not None else (len(m.data) if m.type in tarfile.REGULAR_TYPES else 0)
    info.mtime = m.mtime
    info.mode = m.mode
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if m.pax:
        info.pax_headers = dict(m.pax)
        fmt = tarfile.PAX_FORMAT
    return info.tobuf(fmt, "utf-8", "surrogateescape")  # type: ignore[arg-type]


def pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % BLOCK)


def tar(members: Iterable[Member], fmt: int = tarfile.GNU_FORMAT, end: bool = True) -> bytes:
    """Headers and padded data in order; `end=False` leaves out the end-of-archive blocks."""
    out = b"".join(header(m, fmt) + pad(m.data) for m in members)
    return out + END if end else out


def files(pairs: Mapping[str, bytes]) -> list[Member]:
    return [regular(name, data) for name, data in pairs.items()]


def raw_header(name: bytes, size: int, typeflag: bytes = tarfile.REGTYPE) -> bytes:
    """A ustar header with `name` stored byte for byte (e.g. with a NUL inside), checksum fixed up."""
    info = tarfile.TarInfo("placeholder")
    info.size, info.type, info.mtime, info.mode = size, typeflag, MTIME, 0o644
    block = bytearray(info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape"))
    assert len(block) == BLOCK and len(name) <= 100
    block[0:100] = name.ljust(100, b"\0")
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def class_archive(members: Mapping[str, bytes]) -> bytes:
    """An outer tar whose members are stored under exactly the given names (class tars or not)."""
    return tar(regular(name, data) for name, data in members.items())


def class_files(name: str, count: int = 3) -> dict[str, bytes]:
    """Deterministic small JPEG-named files for a well-behaved class."""
    return {f"{name}_{i}.JPEG": hashlib.sha256(f"{name}/{i}".encode()).digest() * (i + 1) for i in range(count)}


def member_offsets(archive: bytes) -> list[int]:
    """Where each top-level member's header starts, and where the end-of-archive marker starts."""
    offsets = []
    pos = 0
    while pos + BLOCK <= len(archive) and archive[pos:pos + BLOCK] != b"\0" * BLOCK:
        offsets.append(pos)
        info = tarfile.TarInfo.frombuf(archive[pos:pos + BLOCK], "utf-8", "surrogateescape")
        pos += BLOCK + len(pad(b"\0" * info.size))
    offsets.append(pos)
    return offsets


# ---- compression and bombs -----------------------------------------------------------------

CHUNK = 16 << 20


def compress(data: bytes, kind: str) -> bytes:
    if kind == "gz":
        return gzip.compress(data, 9, mtime=0)
    if kind == "bz2":
        return bz2.compress(data, 9)
    if kind == "xz":
        return lzma.compress(data, preset=0)
    raise ValueError(kind)


class _Compressor(Protocol):
    def compress(self, data: bytes, /) -> bytes: ...
    def flush(self) -> bytes: ...


def _stream(kind: str, pieces: Iterator[bytes], level: int = 9) -> bytes:
    """Compress piece by piece, so a bomb's expansion never sits in memory."""
    comp: _Compressor
    if kind == "gz":
        comp = zlib.compressobj(level, zlib.DEFLATED, 31)  # wbits 31: a gzip container
    elif kind == "xz":
        comp = lzma.LZMACompressor(preset=0)
    else:
        raise ValueError(kind)
    out = [comp.compress(p) for p in pieces]
    out.append(comp.flush())
    return b"".join(out)


def _zeros(n: int, byte: bytes = b"\0") -> Iterator[bytes]:
    chunk = byte * CHUNK
    while n > 0:
        yield chunk[:min(n, CHUNK)]
        n -= CHUNK


def zeros_bomb(kind: str, member_bytes: int, members: int = 1) -> bytes:
    """A compressed flat tar of `members` files of zeros, built without holding the expansion in memory."""

    def pieces() -> Iterator[bytes]:
        for i in range(members):
            yield header(Member(f"zeros{i:03d}.bin", size=member_bytes))
            yield from _zeros(member_bytes)
            yield b"\0" * (-member_bytes % BLOCK)
        yield END

    return _stream(kind, pieces())


def longname_bomb(claimed: int) -> bytes:
    """A .tar.gz whose first header is a GNU longname record of `claimed` bytes of 'a' (tarfile reads
    such records whole into memory before any name check can run). Level 1: fast to build."""

    def pieces() -> Iterator[bytes]:
        yield header(Member("././@LongLink", type=tarfile.GNUTYPE_LONGNAME, size=claimed))
        yield from _zeros(claimed, b"a")
        yield b"\0" * (-claimed % BLOCK)
        yield header(regular("after.bin", b"x")) + pad(b"x") + END

    return _stream("gz", pieces(), level=1)


def expansion(compressed: bytes, kind: str) -> int:
    """Decompressed size, streamed (for asserting a bomb really is one)."""
    decoder: Any = {"gz": zlib.decompressobj(31), "bz2": bz2.BZ2Decompressor(), "xz": lzma.LZMADecompressor()}[kind]
    total = 0
    for start in range(0, len(compressed), 1 << 16):
        total += len(decoder.decompress(compressed[start:start + (1 << 16)]))
    return total


def gzip_cut_points(pieces: Iterable[bytes]) -> tuple[bytes, list[int]]:
    """A gzip stream of the pieces, flushed to a byte boundary after each, and those boundaries:
    cutting at one leaves a stream that decodes to exactly the pieces before it, then stops."""
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    out = bytearray()
    cuts = []
    for piece in pieces:
        out += comp.compress(piece) + comp.flush(zlib.Z_FULL_FLUSH)
        cuts.append(len(out))
    out += comp.flush()
    return bytes(out), cuts


# ---- running datasetd against them and reading back what it left -------------------------------


@dataclass
class Site:
    """A tmp tree: sources/ (archives), root/ (datasetd's), outside/ (what hostile members aim at)."""

    tmp: Path
    workers: int = 2

    @property
    def root(self) -> Path:
        return self.tmp / "root"

    @property
    def sources(self) -> Path:
        return self.tmp / "sources"

    @property
    def outside(self) -> Path:
        return self.tmp / "outside"

    @property
    def manifest(self) -> Path:
        return self.tmp / "manifest.toml"

    @property
    def state(self) -> Path:
        return self.root / ".datasetd"

    @classmethod
    def create(cls, tmp: Path) -> Site:
        site = cls(tmp)
        for d in (site.root, site.sources, site.outside / "dir"):
            d.mkdir(parents=True)
        (site.outside / "sentinel.txt").write_bytes(b"must never change\n")
        return site

    def archive(self, name: str, data: bytes) -> Path:
        path = self.sources / name
        path.write_bytes(data)
        return path

    def write_manifest(self, components: Mapping[str, Mapping[str, object]]) -> Path:
        doc = {"version": 1, "root": str(self.root), "daemon": {"workers": self.workers},
               "components": {name: dict(keys) for name, keys in components.items()}}
        self.manifest.write_text(toml_document(doc), encoding="utf-8")
        return self.manifest


def toml_str(s: str) -> str:
    """A TOML basic string holding exactly `s`: anything not printable is escaped."""
    return '"' + "".join(c if c.isprintable() and c not in '"\\' else
                         f"\\u{ord(c):04x}" if ord(c) <= 0xFFFF else f"\\U{ord(c):08x}" for c in s) + '"'


def toml_key(k: str) -> str:
    return k if k and all(c.isascii() and (c.isalnum() or c in "_-") for c in k) else toml_str(k)


def toml_value(v: object) -> str:
    """Any value TOML can hold, on one line (tables inline), so a whole manifest can be generated."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | str):
        return str(v) if isinstance(v, int) else toml_str(v)
    if isinstance(v, float):
        return repr(v)  # 'inf', 'nan', '1e+300' are TOML floats too
    if isinstance(v, datetime.date):
        return v.isoformat()
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{toml_key(k)} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(type(v))


def toml_document(doc: Mapping[str, object]) -> str:
    return "".join(f"{toml_key(k)} = {toml_value(v)}\n" for k, v in doc.items())


@dataclass
class Result:
    code: int
    stderr: str
    status: dict[str, Any]

    def error(self, component: str) -> str:
        """The `datasetd: NAME: message` line apply prints for a failed component."""
        prefix = f"datasetd: {component}: "
        lines = [line[len(prefix):] for line in self.stderr.splitlines() if line.startswith(prefix)]
        assert len(lines) == 1, f"expected one error line for {component}, stderr was:\n{self.stderr[-3000:]}"
        return lines[0]

    def last_error(self, component: str) -> str | None:
        value = self.status.get("components", {}).get(component, {}).get("last_error")
        return None if value is None else str(value)

    def events(self, event: str) -> list[dict[str, Any]]:
        out = []
        for line in self.stderr.splitlines():
            if line.startswith("{"):
                record = json.loads(line)
                if record.get("event") == event:
                    out.append(record)
        return out


def apply(site: Site, verb: str = "apply") -> Result:
    """`datasetd apply` in this process (its workers are real forked processes)."""
    from datasetd import cli

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli.main(["--log-format", "json", verb, str(site.manifest)])
    status_path = site.state / "status.json"
    status = json.loads(status_path.read_text()) if status_path.exists() else {}
    return Result(code, err.getvalue(), status)


Entry = tuple[str, int, str]  # kind, size, sha256 or link target


def snapshot(top: Path, skip: Iterable[Path]) -> dict[str, Entry]:
    """Every path under `top` except the `skip` subtrees: kind, size and content digest (links not followed)."""
    skipped = {str(p) for p in skip}
    out: dict[str, Entry] = {}
    stack = [str(top)]
    while stack:
        for entry in os.scandir(stack.pop()):
            if entry.path in skipped:
                continue
            st = entry.stat(follow_symlinks=False)
            rel = os.path.relpath(entry.path, top)
            if entry.is_symlink():
                out[rel] = ("symlink", 0, os.readlink(entry.path))
            elif entry.is_dir(follow_symlinks=False):
                out[rel] = ("dir", 0, "")
                stack.append(entry.path)
            elif entry.is_file(follow_symlinks=False):
                out[rel] = ("file", st.st_size, hashlib.sha256(Path(entry.path).read_bytes()).hexdigest())
            else:
                out[rel] = (f"mode {stat.S_IFMT(st.st_mode):o}", 0, "")
    return out


def tree(folder: Path) -> dict[str, bytes]:
    """Regular files below `folder` by relative name (anything else fails the test)."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_symlink() or not (path.is_dir() or path.is_file()):
            raise AssertionError(f"{path} is neither a plain file nor a directory")
        if path.is_file():
            out[str(path.relative_to(folder))] = path.read_bytes()
    return out


def journal(site: Site, sql: str, *args: object) -> list[tuple[Any, ...]]:
    path = site.state / "journal.sqlite"
    if not path.exists():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return list(db.execute(sql, args))
    finally:
        db.close()


def unit_states(site: Site, component: str) -> dict[str, str]:
    return dict(journal(site, "SELECT unit, state FROM unit WHERE component=?", component))
