"""How far an index pass (archive.unpack.index_archive, in a worker process) has read, for status.

The worker writes the count into a small file it owns under the state dir; the
executor's status report reads it while that component's IndexArchive runs.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import Protocol


class Counted(Protocol):
    """What the progress file reads its parser's position from (a HashingReader, or a tar's offset)."""

    @property
    def count(self) -> int: ...


class ProgressFile:
    """Writes min(bytes hashed, bytes parsed) as 8 bytes into `path` every 0.25 s from a thread of its own.

    Neither flushed nor fsynced: it is only a display, and a crash leaves at worst a stale count that
    the next index pass overwrites (status reads it only while this component's index pass runs)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.parser: Counted | None = None
        self._hashed = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="index-progress", daemon=True)

    def hashed(self, size: int) -> None:
        self._hashed = size

    def __enter__(self) -> ProgressFile:
        if self.path is not None:
            self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        if self.path is not None:
            self._thread.join()
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()  # only a display: no crash needs it gone

    def _run(self) -> None:
        assert self.path is not None
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            while not self._done.wait(0.25):
                parsed = self.parser.count if self.parser is not None else 0
                os.pwrite(fd, min(self._hashed, parsed).to_bytes(8, "little"), 0)
        finally:
            os.close(fd)


def read_progress(path: Path) -> int | None:
    """The bytes an index pass running now has done, as its ProgressFile says; None before it starts."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    return int.from_bytes(data, "little") if len(data) == 8 else None
