"""The digest of a torrent's file, taken in file order as its pieces pass: less to read after the last one.

libtorrent's piece picker takes pieces in any order, and sha256 cannot be combined
from pieces. So one thread follows the file's contiguous prefix of passed pieces
(the frontier) and reads each piece back from the file the moment it joins that
prefix, while its pages are still in the page cache; what is left when the last
piece passes is read then, still from the page cache, with no resume save first.

A piece that just passed may not be in the file yet (libtorrent 2.1's store
buffer writes it later, up to a flush): while it is fresh, a page of it that reads as
zeros (a hole of the sparse file) is not taken. A fence vouches for it: libtorrent's
flush_cache, asked for after the piece passed, puts every write of the torrent in the
file, and once it passed (fenced()) the piece is read as it is, zero pages and all.
inorder.py asks for fences as pieces pass and whenever the digest waits at a fresh
piece with a hole; without one in FENCE_WAIT, or with no fencer, the piece's bytes are
taken if they match the torrent's own SHA-1 (zeros of the data's own, such as a tar's
record padding) and read again shortly if not. A piece that failed its hash in this
session (a lying peer's bytes may be in the file) is taken only once its bytes match
that SHA-1, fence or not. Checking every piece's SHA-1 would cost as
much CPU as the digest itself, on cores libtorrent needs; the pin check at the end
decides anyway (run.py), and a digest it refuses sends the caller back to reading
the whole file.
"""

from __future__ import annotations

import hashlib
import os
import queue
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
FENCE_WAIT = 0.5  # how long a fresh piece with a hole waits for a fence before its SHA-1 is checked
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
        # Passed pieces whose write may not be in the file yet, and when they passed (a count of
        # passes): a fence asked for after a piece passed puts its write in the file (fenced()).
        self._fresh: dict[int, int] = {}
        self._passes = 0
        self._fencing = False  # a fencer (inorder.py) is asking for fences as pieces pass
        self._want_fence = False  # the hashing thread waits at a fresh piece with a hole
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
        # The last bytes of a piece whose SHA-1 did not match: the same bytes read again cannot
        # match either, so a write still not landed costs a read and a compare, not another SHA-1.
        self._refused: tuple[int, bytes] | None = None
        self._closed = False
        self._writeback = _Writeback(path)
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
                self._passes += 1
                if fresh:
                    self._fresh[piece] = self._passes
                else:
                    self._fresh.pop(piece, None)
            was = self.passed_to
            while self.passed_to in self._passed:
                self.passed_to += 1
            if self.passed_to > self.layout.last_piece and self.at_last is None:
                self.at_last = (was - self.layout.first_piece, self.hashed)
            self._cond.notify_all()
            return self.passed_to != was

    def missed(self, pieces: Iterable[int]) -> bool:
        """Pieces libtorrent holds that never passed here: their alert was lost (dropped from a full
        alert queue, or a handler that failed). Without them the digest would wait at the first one
        for ever once the download is done. Passed now as fresh: their write may lag like any other
        just checked, so a hole in them is still never taken. True if any was missing."""
        with self._cond:  # an RLock: passed() takes it again
            missing = [p for p in pieces if p not in self._passed]
            if missing:
                self.passed(missing, fresh=True)
            return bool(missing)

    def window(self, size: int) -> list[int]:
        """The first `size` pieces past the passed prefix that have not passed (the picker's next ones)."""
        with self._cond:
            end = min(self.layout.last_piece + 1, self.passed_to + size)
            return [p for p in range(self.passed_to, end) if p not in self._passed]

    def fence_mark(self, pieces: int) -> int | None:
        """For the fencer: wait until `pieces` fresh pieces ahead of the digest could use a fence
        (any, once the last piece passed or the digest waits at one); the mark to hand fenced()
        after a fence asked for after this returned has passed. None once closed."""
        with self._cond:
            self._fencing = True
            while not self._closed:
                ahead = sum(1 for p in self._fresh if p >= self.next)
                if ahead >= pieces or (ahead and (self.at_last is not None or self._want_fence)):
                    self._want_fence = False
                    return self._passes
                self._cond.wait()
            return None

    def fencing_ended(self) -> None:
        """The fencer stopped: a fresh piece with a hole is checked against its SHA-1 at once."""
        with self._cond:
            self._fencing = False
            self._cond.notify_all()

    def fenced(self, mark: int) -> None:
        """A fence (libtorrent's flush_cache) asked for after fence_mark() returned `mark` has passed:
        the pieces that had passed by then are in the file, zero pages and all: not fresh any more."""
        with self._cond:
            for piece in [p for p, n in self._fresh.items() if n <= mark]:
                del self._fresh[piece]
            self._cond.notify_all()

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
        self._writeback.close()

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # -- the hashing thread -----------------------------------------------------------------------

    def _run(self) -> None:
        failing_since: float | None = None
        tries = 0  # reads of the current piece that came too early
        fence_seen = False
        waited = False  # the current piece waited for a fence once already
        while True:
            with self._cond:
                while not self._closed and (self.stuck or self.next not in self._passed):
                    self._cond.wait()
                if self._closed:
                    return
                piece = self.next
                fresh, suspect = piece in self._fresh, piece in self._failed
                if self._fenced and not fence_seen:
                    # Patience anew: writes asked for before the fence may still be landing.
                    fence_seen, failing_since, tries = True, None, 0
            defer = fresh and self._fencing and not waited  # a fence is cheaper than a SHA-1
            data = self._read(piece, lag=fresh, suspect=suspect, sha1=not defer)
            if data is not None:
                self._take(data)
                # The piece is in the digest: have it written out now, so the fetch's closing
                # fsync waits for the last pieces only (0.3 s of a 1 GB fetch otherwise).
                self._writeback.start(*self.layout.file_range(piece))
                failing_since, tries, waited = None, 0, False
                continue
            if defer:
                waited = True
                self._await_fence(piece)
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

    def _await_fence(self, piece: int) -> None:
        """Until a fence has put the piece's write in the file (or FENCE_WAIT passed, or fencing ended)."""
        with self._cond:
            self._want_fence = True
            self._cond.notify_all()
            self._cond.wait_for(lambda: piece not in self._fresh or self._closed or not self._fencing, FENCE_WAIT)

    def _read(self, piece: int, *, lag: bool, suspect: bool, sha1: bool = True) -> bytes | None:
        """The piece's bytes in the file; None if they cannot be the ones libtorrent checked yet.

        `lag`: the piece just passed, and a block that reads as a hole is a write not landed.
        `suspect`: it failed before, so only its SHA-1 proves the good bytes replaced the bad.
        `sha1`: a hole may be checked against the piece's SHA-1 (else None: a fence will tell).
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
        if hole and not sha1 and not suspect:
            return None
        if hole or suspect:
            # Only the piece's SHA-1 tells a write not landed from zeros that are the data's own
            # (a tar's record padding), and a lie still in the file from the honest bytes.
            expected = lay.sha1(piece)
            if expected is not None:
                if self._refused == (piece, data):
                    return None
                if hashlib.sha1(data, usedforsecurity=False).digest() == expected:
                    return data
                self._refused = (piece, data)
                return None
            if hole:
                return None
        return data

    def _take(self, data: bytes) -> None:
        self._refused = None
        self._hashes.update(data)
        with self._cond:
            self.hashed += len(data)
            self.next += 1
            self._cond.notify_all()


class _Writeback:
    """start_writeback of the pieces taken, on a thread of its own: sync_file_range blocks while
    the device's queue is full (0.5-0.8 s of a 1 GB fetch), and the digest must not wait for it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._ranges: queue.SimpleQueue[tuple[int, int] | None] = queue.SimpleQueue()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name="torrent-writeback", daemon=True)
        self._thread.start()

    def start(self, start: int, end: int) -> None:
        self._ranges.put((start, end))

    def close(self) -> None:
        """Drop the ranges not started yet (the fetch's fsync writes them) and end the thread."""
        self._closing.set()
        self._ranges.put(None)
        self._thread.join()

    def _run(self) -> None:
        fd: int | None = None
        try:
            while (r := self._ranges.get()) is not None:
                if self._closing.is_set():
                    continue
                if fd is None:
                    try:
                        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
                    except OSError:
                        continue  # gone (a disk error libtorrent reports): the closing fsync still runs
                platform.start_writeback(fd, r[0], r[1] - r[0])
        finally:
            if fd is not None:
                os.close(fd)


def _has_hole(data: bytes) -> bool:
    """A page of zeros: what a sparse file reads where a write has not landed yet. The search
    first (at memory speed, and empty for most pieces of real data), then the aligned pages."""
    if _HOLE[:len(data) % PAGE or PAGE] not in data:  # as long as the shortest page (the last)
        return False
    view = memoryview(data)
    return any(view[i:i + PAGE] == _HOLE[:len(data) - i] for i in range(0, len(data), PAGE))
