"""The digest of a download, taken on its own thread while the bytes arrive: no pass after it.

sha256 cannot be combined from pieces, so the hasher follows the contiguous
prefix of the part file: the connections hand it each chunk they wrote (through
a bounded queue, so a slow hasher slows the download instead of filling memory),
and it takes the chunks that continue its prefix as they come. Bytes that arrived
ahead of the prefix (a later segment, or the bytes a resumed download already
held) are read back from the part file once the prefix reaches them, while the
pages are still hot. Only bytes a connection wrote and counted are ever hashed,
so when the prefix covers the whole file the digest is the file's.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable

from datasetd.archive.digest import PinHashes
from datasetd.errors import Restart, TemporaryError

QUEUE_CHUNKS = 16  # chunks in flight to the hasher (each one recv, at most transport.READ_SIZE)
READ_BACK = 4 << 20  # bytes per pread when the prefix is read back from the part file
_CLOSE = object()

Prefix = Callable[[], int]  # bytes [0, n) of the part that are written and counted


class PrefixHasher:
    """sha256 (and md5) of the part's bytes [0, offset), kept by one thread."""

    def __init__(self, fd: int, *, md5: bool) -> None:
        self._fd = fd
        self._md5 = md5
        self._q: queue.Queue[object] = queue.Queue(QUEUE_CHUNKS)
        self._cond = threading.Condition()
        self._prefix: Prefix = lambda: 0
        self._error: BaseException | None = None
        self._asked = self._gen = 0  # follow() calls made / taken by the thread
        self._new_digests()
        self._thread = threading.Thread(target=self._run, name="http-hash", daemon=True)
        self._thread.start()

    def _new_digests(self) -> None:
        self.offset = 0
        self.short = False  # the part ended before the prefix it claims (someone truncated it)
        self._hashes = PinHashes(md5=self._md5)

    # -- the connections' side ----------------------------------------------------------------

    def follow(self, prefix: Prefix) -> None:
        """Start over from byte 0 of a part whose written prefix `prefix()` tells.

        Call it after the part was emptied (or loaded): the hasher reads back what the
        prefix already covers, e.g. the bytes a resumed download holds.
        """
        # The new prefix first: whatever the thread reads with it before it takes the reset
        # goes into the old digests, which the reset drops.
        with self._cond:
            self._prefix = prefix
            self._asked += 1
            gen = self._asked
        self._put(gen)

    def feed(self, offset: int, chunk: bytes) -> None:
        """A chunk just written at `offset` (call before counting it in the prefix)."""
        self._put((offset, chunk))

    def digests(self, size: int, stop: threading.Event) -> tuple[str, str | None]:
        """sha256 and md5 hex of bytes [0, size) once the prefix has reached `size`."""
        self._put(None)
        with self._cond:
            while self._gen != self._asked or self.offset < size:
                if self._error is not None:
                    raise self._error
                if stop.is_set():
                    raise TemporaryError("stopped", 0)
                if self.short and self._gen == self._asked:
                    raise Restart(f"the part file ends at {self.offset} bytes, expected {size} "
                                  "(truncated by someone)")
                self._cond.wait(0.05)
            d = self._hashes.digests(size)
            return d.sha256, d.md5

    def close(self) -> None:
        self._put(_CLOSE)
        self._thread.join()

    def _put(self, item: object) -> None:
        while True:
            if self._error is not None:
                raise self._error
            if not self._thread.is_alive():
                return
            try:
                self._q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    # -- the hasher's thread ------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while (item := self._next()) is not _CLOSE:
                if isinstance(item, int):  # a follow(): start over
                    with self._cond:
                        self._new_digests()
                        self._gen = item
                elif isinstance(item, tuple):
                    self._take(*item)
                if self._q.empty():  # nothing queued continues the prefix: read the rest back
                    self._read_back()
        except BaseException as e:  # noqa: BLE001 (handed to the connections and to digests())
            with self._cond:
                self._error = e
                self._cond.notify_all()

    def _next(self) -> object:
        try:
            return self._q.get(timeout=0.1)
        except queue.Empty:
            return None

    def _take(self, offset: int, chunk: bytes) -> None:
        end = offset + len(chunk)
        if offset <= self.offset < end:
            self._update(memoryview(chunk)[self.offset - offset:])
        # Other chunks lie ahead of the prefix (read back later) or behind it (read back already).

    def _read_back(self) -> None:
        target = self._prefix()
        while self.offset < target:
            data = os.pread(self._fd, min(READ_BACK, target - self.offset), self.offset)
            if not data:
                # Emptied meanwhile: by a restart (whose reset drops these digests) or by someone else.
                with self._cond:
                    self.short = True
                    self._cond.notify_all()
                return
            self._update(data)

    def _update(self, data: bytes | memoryview) -> None:
        self._hashes.update(data)
        with self._cond:
            self.offset += len(data)
            self._cond.notify_all()
