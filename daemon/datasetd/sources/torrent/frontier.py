"""The digest of a torrent's file, taken in file order as its pieces pass: less to read after the last one.

libtorrent's piece picker takes pieces in any order, and sha256 cannot be combined
from pieces. So one thread follows the file's contiguous prefix of passed pieces
(the frontier) and reads each piece back from the file the moment it joins that
prefix, while its pages are still in the page cache; what is left when the last
piece passes is read then, still from the page cache, with no resume save first.

A piece that just passed may not be in the file yet (libtorrent 2.1's store
buffer writes it later, up to a flush): a piece with a page that reads as zeros (a
hole of the sparse file) is read again shortly, unless its bytes match the torrent's
own SHA-1 (zeros of the data's own, such as a tar's record padding). A piece that
failed its hash in this session (a lying peer's bytes may be in the file) is taken
only once its bytes match that SHA-1. Checking every piece's SHA-1 would cost as
much CPU as the digest itself, on cores libtorrent needs; the pin check at the end
decides anyway (run.py), and a digest it refuses sends the caller back to reading
the whole file.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from datasetd import platform
from datasetd.archive.digest import Digests, PinHashes
from datasetd.errors import TemporaryError
from datasetd.sources.torrent.types import Layout

RETRY_EVERY = 0.005  # seconds before a piece whose bytes are not in the file yet is read again, doubling
RETRY_MAX = 0.05
RETRY_FOR = 2.0  # then it waits for the fence (digests()) instead: the write may be stuck behind others
# A write lands in the page cache a page at a time: a read racing libtorrent's flush of the piece
# sees its first pages written and the rest still zero, in the middle of one 16 KiB block.
PAGE = 4096
_HOLE = bytes(PAGE)


class Frontier:
    """sha256 (and md5) of the file's bytes, piece by piece in file order, on one thread."""

    def __init__(self, path: Path, layout: Layout, *, md5: bool) -> None:
        self.path, self.layout = path, layout
        self._hashes = PinHashes(md5=md5)
        self._cond = threading.Condition()
        self._passed: set[int] = set()
        self._fresh: set[int] = set()  # passed pieces whose write may not be in the file yet
        self._failed: set[int] = set()  # pieces that failed their hash: taken only if their SHA-1 matches
        self.next = layout.first_piece  # the first piece not hashed yet
        self.passed_to = layout.first_piece  # the first piece not passed: the prefix the window follows
        self.hashed = 0  # bytes of the file in the digest
        # When the last piece passed: the passed prefix before it (pieces) and the digest's bytes.
        self.at_last: tuple[int, int] | None = None
        self.stuck = False  # the next piece kept failing its read: it waits for the fence in digests()
        self.rereads = 0  # reads of a piece that did not match yet (for the events)
        self.failures = 0  # hash failures libtorrent reported (a lying or broken peer; for the events)
        self._fenced = False  # digests() ran the fence: a stuck piece gets RETRY_FOR more of reads
        self._fd: int | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="torrent-hash", daemon=True)
        self._thread.start()

    # -- the download's side ----------------------------------------------------------------------

    def passed(self, pieces: Iterable[int], *, fresh: bool) -> bool:
        """Pieces that passed libtorrent's hash check: `fresh` from its alerts (the write may lag),
        or held already (resume data, a check of the files: a mismatch there is not a lag).
        True when the contiguous prefix of passed pieces grew."""
        with self._cond:
            for piece in pieces:
                self._passed.add(piece)
                (self._fresh.add if fresh else self._fresh.discard)(piece)
            was = self.passed_to
            while self.passed_to in self._passed:
                self.passed_to += 1
            if self.passed_to > self.layout.last_piece and self.at_last is None:
                self.at_last = (was - self.layout.first_piece, self.hashed)
            self._cond.notify_all()
            return self.passed_to != was

    def window(self, size: int) -> list[int]:
        """The first `size` pieces past the passed prefix that have not passed (the picker's next ones)."""
        with self._cond:
            end = min(self.layout.last_piece + 1, self.passed_to + size)
            return [p for p in range(self.passed_to, end) if p not in self._passed]

    def failed(self, piece: int) -> None:
        """A piece failed libtorrent's hash check: whatever the file held of it was wrong."""
        with self._cond:
            self.failures += 1
            self._failed.add(piece)
            self._passed.discard(piece)
            self.passed_to = min(self.passed_to, piece)

    def digests(self, fence: Callable[[], object], stop: threading.Event) -> Digests | None:
        """The file's digests once every piece is in; None if a piece never matched its SHA-1.

        Call once libtorrent counts the whole file as passed. After `fence()` (libtorrent's
        flush_cache: the writes it queued are in the file) a piece still stuck is read again for
        up to RETRY_FOR; None then means the file on disk is not what libtorrent checked, and the
        caller reads it whole instead.
        """
        fenced = False
        with self._cond:
            while self.next <= self.layout.last_piece:
                if stop.is_set():
                    raise TemporaryError(f"{self.path}: stopped while checking its digest", 0)
                if self.stuck or not fenced:
                    if fenced:
                        return None
                    self._cond.release()
                    try:
                        fence()
                    finally:
                        self._cond.acquire()
                    fenced, self._fenced, self.stuck = True, True, False
                    self._cond.notify_all()
                self._cond.wait(0.05)
            return self._hashes.digests(self.hashed)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()
        self._close_fd()

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # -- the hashing thread -----------------------------------------------------------------------

    def _run(self) -> None:
        failing_since: float | None = None
        tries = 0  # reads of the current piece that came too early
        fence_seen = False
        while True:
            with self._cond:
                while not self._closed and (self.stuck or self.next not in self._passed):
                    self._cond.wait()
                if self._closed:
                    return
                piece = self.next
                fresh, suspect = piece in self._fresh, piece in self._failed
                if self._fenced and not fence_seen:
                    # Patience anew: the fence's alert may answer an earlier flush (libtorrent posts
                    # one when the torrent finishes, and for a resume save), so writes may still land.
                    fence_seen, failing_since, tries = True, None, 0
            data = self._read(piece, lag=fresh, suspect=suspect)
            if data is not None:
                self._take(data)
                if self._fd is not None:
                    # The piece is in the digest: have it written out now, so the fetch's closing
                    # fsync waits for the last pieces only (0.3 s of a 1 GB fetch otherwise).
                    start, end = self.layout.file_range(piece)
                    platform.start_writeback(self._fd, start, end - start)
                failing_since, tries = None, 0
                continue
            now = time.monotonic()
            failing_since = failing_since or now
            with self._cond:
                self.rereads += 1
                if not fresh or now - failing_since >= RETRY_FOR:
                    self.stuck, failing_since = True, None
                    self._cond.notify_all()
                    continue
            tries += 1
            time.sleep(min(RETRY_MAX, RETRY_EVERY * 2 ** min(tries, 4)))

    def _read(self, piece: int, *, lag: bool, suspect: bool) -> bytes | None:
        """The piece's bytes in the file; None if they cannot be the ones libtorrent checked yet.

        `lag`: the piece just passed, and a block that reads as a hole is a write not landed.
        `suspect`: it failed before, so only its SHA-1 proves the good bytes replaced the bad.
        """
        lay = self.layout
        start, end = lay.file_range(piece)
        try:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            data = os.pread(self._fd, end - start, start)
        except OSError:
            # Not created yet (libtorrent's first write makes it), or not a file (a disk error
            # libtorrent reports too): open it afresh next time.
            self._close_fd()
            return None
        if len(data) != end - start:
            return None
        hole = lag and _has_hole(data)
        if hole or suspect:
            # Only the piece's SHA-1 tells a write not landed from zeros that are the data's own
            # (a tar's record padding), and a lie still in the file from the honest bytes.
            expected = lay.sha1(piece)
            if expected is not None:
                return data if hashlib.sha1(data, usedforsecurity=False).digest() == expected else None
            if hole:
                return None
        return data

    def _take(self, data: bytes) -> None:
        self._hashes.update(data)
        with self._cond:
            self.hashed += len(data)
            self.next += 1
            self._cond.notify_all()


def _has_hole(data: bytes) -> bool:
    """A page of zeros: what a sparse file reads where a write has not landed yet. The search
    first (at memory speed, and empty for most pieces of real data), then the aligned pages."""
    if _HOLE[:len(data) % PAGE or PAGE] not in data:  # as long as the shortest page (the last)
        return False
    view = memoryview(data)
    return any(view[i:i + PAGE] == _HOLE[:len(data) - i] for i in range(0, len(data), PAGE))
