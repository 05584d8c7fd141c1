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

    def digests(self, stop: threading.Event) -> Digests | None:
        return self.frontier.digests(lambda: self.lease.flush(timeout=FLUSH_TIMEOUT), stop)

    def close(self) -> None:
        self.lease.on_piece = None
        self.frontier.close()
