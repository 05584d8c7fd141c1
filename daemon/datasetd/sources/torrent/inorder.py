"""One fetch's in-order digest: a Frontier fed by the lease's piece alerts, and a window that feeds it.

verify.Verifier starts one when run.Download knows the file it wants, and asks
it for the file's digests once libtorrent counts the whole file as passed; None
means "read the whole file instead". With one seeder, libtorrent's picker takes pieces in
random order (rarest first among equals), so at the last piece the prefix the
digest can follow was 3-29 pieces of 241: nearly all of the file was still read
after the download. So the pieces just past the passed prefix are raised to
libtorrent's top priority (a window that moves as the prefix grows); the rest
keep the file's priority and fill the pipe as before (sequential_download, the
other way to get the file in order, made the transfer itself slower). A lab's
fan-out owns the piece priorities (lab.py), so a lab member has no window.

A thread of its own asks libtorrent for fences (flush_cache) while the pieces pass,
every FENCE_PIECES fresh ones and whenever the digest waits at a fresh piece with a
hole: a piece a fence vouches for needs no SHA-1 of its own for its zero pages, nor
retries while its write lags (frontier.py). On the bench's 1 GB file that was 54 of
241 pieces SHA-1'd and ~25 re-reads with their waits; with the fences, none.
"""

from __future__ import annotations

import threading
from pathlib import Path

from datasetd.archive.digest import Digests
from datasetd.sources.torrent.frontier import Frontier
from datasetd.sources.torrent.lt import Lease
from datasetd.sources.torrent.types import FileInfo, Layout

TOP_PRIORITY = 7  # libtorrent's highest piece priority: the picker takes these before the rest (4)
WINDOW_BYTES = 64 << 20  # bytes of pieces past the prefix at top priority, at least MIN_WINDOW pieces ...
MIN_WINDOW, MAX_WINDOW = 8, 32  # ... and at most MAX_WINDOW (all of it is sent as each piece passes)
FLUSH_TIMEOUT = 60.0
FENCE_PIECES = 4  # fresh pieces ahead of the digest that make a fence worth asking for
FENCE_TIMEOUT = 5.0  # a fence slower than this ends the fencing: the SHA-1 checks stand in for it


def window_pieces(piece_length: int) -> int:
    return max(MIN_WINDOW, min(MAX_WINDOW, WINDOW_BYTES // max(1, piece_length)))


class InOrder:
    """The frontier of `file` in `lease`'s torrent, fed from libtorrent's piece alerts."""

    def __init__(self, lease: Lease, path: Path, file: FileInfo, layout: Layout, *, md5: bool,
                 window: bool) -> None:
        self.lease, self.file = lease, file
        self.frontier = Frontier(path, layout, md5=md5)
        self.window = window_pieces(layout.piece_length) if window else 0
        # Called on the session's thread as each piece is checked: no queue, so the piece is
        # read back while its pages are hot and the window moves before the picker asks again.
        lease.on_piece = self._on_piece
        self.held()
        self._fencing = threading.Thread(target=self._fence, name="torrent-fence", daemon=True)
        self._fencing.start()

    def _on_piece(self, piece: int, ok: bool) -> None:
        if not ok:
            self.frontier.failed(piece)
        elif self.frontier.passed((piece,), fresh=True):
            self.raise_window()

    def held(self) -> None:
        """Pieces libtorrent holds without an alert of ours (resume data, a check of the files)."""
        have = self.lease.have()
        self.frontier.passed((p for p in range(self.file.first_piece, self.file.last_piece + 1) if have[p]),
                             fresh=False)
        self.raise_window()

    def raise_window(self) -> None:
        """The window at top priority. Also sent on the fetch loop's tick: a file-priority change
        (ours at the start, another lease's later) resets piece priorities when its disk job
        completes, which may be after the alerts that had moved the window."""
        if self.window:
            self.lease.prioritize([(p, TOP_PRIORITY) for p in self.frontier.window(self.window)])

    def _fence(self) -> None:
        """Fences while the download runs: a piece that passed before one of them is read without
        the hole check, so zeros of the data's own cost no SHA-1 and a write that lagged no retries."""
        while (mark := self.frontier.fence_mark(FENCE_PIECES)) is not None:
            try:
                passed = self.lease.flush(timeout=FENCE_TIMEOUT)
            except RuntimeError:  # the torrent was removed (the session closed): nothing left to fence
                passed = False
            if not passed:  # no more fences then: fresh pieces keep their check against the SHA-1
                self.frontier.fencing_ended()
                return
            self.frontier.fenced(mark)

    def digests(self, stop: threading.Event) -> Digests | None:
        """Called once libtorrent counts the whole file as passed: every piece it holds is passed
        here too, even one whose alert never came (frontier.missed), before the digest is awaited."""
        have = self.lease.have()
        self.frontier.missed(p for p in range(self.file.first_piece, self.file.last_piece + 1) if have[p])
        return self.frontier.digests(lambda: self.lease.flush(timeout=FLUSH_TIMEOUT), stop)

    def close(self) -> None:
        self.lease.on_piece = None
        self.frontier.close()  # ends the fencing thread too, once its fence (if any) has passed
        self._fencing.join()
