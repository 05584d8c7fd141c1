"""Whole-file digests checked against a component's pins: the one way datasetd hashes an archive.

Used for a torrent's finished file (libtorrent's piece hashes prove the file matches the
torrent, not that the torrent matches the manifest), for a download found already in place,
and for the archive digest of the index pass.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from datasetd.config.manifest import Component
from datasetd.core.model import CHUNK
from datasetd.errors import DigestMismatch, PermanentError, TemporaryError


@dataclass(frozen=True)
class Digests:
    size: int
    sha256: str
    md5: str | None


class PinHashes:
    """sha256, and md5 where a pin asks for it, of bytes fed in order: what every whole-file digest
    (a file read here, a download's prefix, a torrent's file in piece order) is taken with."""

    def __init__(self, *, md5: bool) -> None:
        self._sha = hashlib.sha256()
        self._m5 = hashlib.md5(usedforsecurity=False) if md5 else None

    def update(self, data: bytes | memoryview) -> None:
        self._sha.update(data)
        if self._m5 is not None:
            self._m5.update(data)

    def digests(self, size: int) -> Digests:
        return Digests(size, self._sha.hexdigest(), self._m5.hexdigest() if self._m5 is not None else None)


def hash_file(path: Path, *, md5: bool, stop: threading.Event,
              progress: Callable[[int], None] = lambda _: None) -> Digests:
    """sha256 (and md5 if asked) of `path`; TemporaryError if `stop` is set meanwhile."""
    hashes = PinHashes(md5=md5)
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            hashes.update(chunk)
            size += len(chunk)
            if size % (8 * CHUNK) == 0:  # every 8 MiB: often enough for a display, rare enough to cost nothing
                progress(size)
                if stop.is_set():
                    raise TemporaryError(f"{path}: stopped while checking its digest", 0)
    return hashes.digests(size)


def mismatch(component: Component, d: Digests) -> tuple[str, str, str] | None:
    """(what, expected, actual) for the first pin the digests break, or None."""
    if component.size is not None and d.size != component.size:
        return "size", str(component.size), str(d.size)
    if component.sha256 is not None and d.sha256 != component.sha256.lower():
        return "sha256", component.sha256.lower(), d.sha256
    if component.md5 is not None and d.md5 != component.md5.lower():
        return "md5", component.md5.lower(), str(d.md5)
    return None


def check_pins(component: Component, size: int, sha256: str, md5: str | None) -> None:
    """The one pin check: raise for the first pin (size, sha256, md5) the archive's digests break."""
    broken = mismatch(component, Digests(size, sha256, md5))
    if broken is None:
        return
    what, expected, actual = broken
    hint = f"the file is corrupt or components.{component.name} pins another archive"
    if what == "size":
        raise PermanentError(f"{component.archive}: size is {actual}, expected {expected}; {hint}")
    raise DigestMismatch(str(component.archive), what, expected, actual, hint)
