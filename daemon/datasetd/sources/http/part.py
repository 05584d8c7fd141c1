"""The resumable state of one download: `<file>.part` and its sidecar `<file>.part.json`.

The one rule: the sidecar never claims a byte that is not durable in `.part`.
Bytes are written first, fsynced, and only then counted in a new sidecar
(written atomically), so after a crash or power loss every claimed byte is
there; unclaimed bytes past a claim are simply fetched and overwritten again.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datasetd.errors import NoSpace, PermanentError, TemporaryError
from datasetd.state.durable import write_text_atomic

SIDECAR_VERSION = 1
MAX_SEGMENT = 16 << 20  # segments beyond this are split further: the hashed prefix then trails by little


def part_path(file: Path) -> Path:
    return file.with_name(file.name + ".part")


def sidecar_path(file: Path) -> Path:
    return file.with_name(file.name + ".part.json")


@dataclass
class Segment:
    start: int
    end: int | None  # exclusive; None while the total length is unknown
    done: int = 0  # bytes written (and, once persisted, durable) from start

    @property
    def offset(self) -> int:
        return self.start + self.done

    @property
    def complete(self) -> bool:
        return self.end is not None and self.offset >= self.end


@dataclass
class PartState:
    url: str  # redacted URL the validators came from
    etag: str | None = None
    last_modified: str | None = None
    size: int | None = None
    segments: list[Segment] = field(default_factory=list)

    @property
    def done(self) -> int:
        return sum(s.done for s in self.segments)

    @property
    def complete(self) -> bool:
        return bool(self.segments) and all(s.complete for s in self.segments)

    def prefix(self) -> int:
        """Bytes [0, n) written and counted without a gap: what the hasher may take."""
        n = 0
        for s in self.segments:
            n += s.done
            if not s.complete:
                break
        return n

    @property
    def segmented(self) -> bool:
        return len(self.segments) > 1

    def to_json(self) -> str:
        return json.dumps({
            "version": SIDECAR_VERSION, "url": self.url, "etag": self.etag,
            "last_modified": self.last_modified, "size": self.size,
            "segments": [[s.start, s.end, s.done] for s in self.segments],
        }, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str) -> PartState | None:
        """None when the sidecar is not one we wrote (then the download starts over)."""
        try:
            data: Any = json.loads(text)
            if data.get("version") != SIDECAR_VERSION:
                return None
            segs = [Segment(int(a), None if b is None else int(b), int(d)) for a, b, d in data["segments"]]
            state = cls(url=str(data["url"]), etag=_opt_str(data.get("etag")),
                        last_modified=_opt_str(data.get("last_modified")),
                        size=None if data.get("size") is None else int(data["size"]), segments=segs)
        except (ValueError, TypeError, KeyError, AttributeError):
            return None
        return state if _consistent(state) else None


def _opt_str(v: object) -> str | None:
    return None if v is None else str(v)


def _consistent(state: PartState) -> bool:
    if not state.segments or state.segments[0].start != 0:
        return False
    for a, b in zip(state.segments, state.segments[1:], strict=False):
        if a.end != b.start:
            return False
    last = state.segments[-1].end
    return all(s.done >= 0 and (s.end is None or s.start + s.done <= s.end) for s in state.segments) and (
        state.size is None or last == state.size)


def split(size: int, connections: int, min_segment: int) -> list[Segment]:
    """One segment per connection, each cut further to at most MAX_SEGMENT; none below min_segment."""
    n = max(1, min(connections, size // max(1, min_segment)))
    step = min(-(-size // n), max(MAX_SEGMENT, min_segment))
    return [Segment(i, min(size, i + step)) for i in range(0, size, step)] or [Segment(0, 0)]


class PartFile:
    """The open `.part` file plus the sidecar; persist() is the only writer of the sidecar."""

    def __init__(self, file: Path) -> None:
        self.file = file
        self.part = part_path(file)
        self.sidecar = sidecar_path(file)
        try:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.part, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise disk_error(self.part, e, 0) from e
        try:
            # One writer per part file; the kernel drops the lock when a killed process dies.
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(self.fd)
            raise TemporaryError(f"{self.part}: another download of this file is running; "
                                 "it will be tried again later", 30.0) from e
        self.lock = threading.Lock()  # serialises every write of the sidecar

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)

    def load(self) -> PartState | None:
        """The sidecar's state, if the part file still holds every byte it claims."""
        try:
            state = PartState.from_json(self.sidecar.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError):
            return None
        if state is None:
            return None
        have = os.fstat(self.fd).st_size
        if any(s.offset > have for s in state.segments if s.done):
            return None
        return state

    def persist(self, snapshot: Callable[[], str]) -> None:
        """Make the claims of `snapshot()` durable.

        The snapshot is taken first, counting only bytes whose pwrite returned;
        fsync(part) then survives power loss for every one of them before the
        sidecar claims them; write_text_atomic survives a crash mid-write (the
        old sidecar, with smaller claims, stays). Under the lock, so a reset
        cannot slip between the snapshot and its write.
        """
        with self.lock:
            text = snapshot()
            os.fsync(self.fd)
            write_text_atomic(self.sidecar, text)

    def reset(self, state: PartState) -> None:
        with self.lock:
            self.reset_locked(state)

    def reset_locked(self, state: PartState) -> None:
        """Start `state` (claiming nothing) over an emptied part file; caller holds self.lock.

        The new sidecar is written before the truncation: a crash in between
        leaves a sidecar claiming nothing over old bytes, never old claims over
        missing bytes.
        """
        write_text_atomic(self.sidecar, state.to_json())
        os.ftruncate(self.fd, 0)
        if state.segmented and state.size:
            self._preallocate(state.size)

    def _preallocate(self, size: int) -> None:
        # Reserve the blocks up front: ENOSPC now rather than hours in, and less fragmentation.
        try:
            os.posix_fallocate(self.fd, 0, size)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                st = os.statvfs(self.part)
                raise NoSpace(str(self.part.parent), size, st.f_bavail * st.f_frsize) from e
            os.ftruncate(self.fd, size)  # the filesystem cannot reserve: a sparse file still works

    def write_at(self, data: bytes | memoryview, offset: int) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.pwrite(self.fd, view, offset)
            except OSError as e:
                raise disk_error(self.part, e, len(view)) from e
            view = view[n:]
            offset += n

    def discard(self) -> None:
        """Drop claims first, then bytes (a crash in between leaves bytes nobody claims)."""
        with self.lock:
            with contextlib.suppress(FileNotFoundError):
                self.sidecar.unlink()
            os.ftruncate(self.fd, 0)


def disk_error(path: Path, e: OSError, need: int) -> Exception:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        try:
            st = os.statvfs(path.parent)
            free = st.f_bavail * st.f_frsize
        except OSError:
            free = 0
        return NoSpace(str(path.parent), need, free)
    return PermanentError(f"{path}: cannot write: {e.strerror}; check the disk and its permissions")
