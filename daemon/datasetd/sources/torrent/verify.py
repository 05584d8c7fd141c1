"""The fetched file against the manifest's pins: the in-order digest if it holds, else the file read whole.

run.Download starts the in-order digest (inorder.py) once it knows the file it wants
and asks here for the verdict once libtorrent counts the whole file as passed. The
digest taken in order is proof only when it matches the pin; anything else (a piece
that never matched its SHA-1, a digest that differs from the pin) sends the check to
reading the whole file, after a resume save and, if that read differs too, a flush.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from datasetd.archive.digest import Digests, hash_file, mismatch
from datasetd.config.manifest import Component
from datasetd.sources.base import Fetched, FetchProgress, ProgressFn
from datasetd.sources.torrent.health import OK
from datasetd.sources.torrent.inorder import FLUSH_TIMEOUT, InOrder
from datasetd.sources.torrent.lt import Lease
from datasetd.sources.torrent.types import FileInfo


class Verifier:
    """One fetch's check of `component.archive`, the file `lease` downloads."""

    def __init__(self, component: Component, lease: Lease, progress: ProgressFn, stop: threading.Event,
                 log: Any) -> None:
        self.c, self.lease, self.progress, self.stop, self.log = component, lease, progress, stop, log
        self.in_order: InOrder | None = None  # the digest taken as pieces pass, while it can be trusted

    def follow(self, file: FileInfo, *, window: bool) -> None:
        """Start the in-order digest of the file (`window`: raise the pieces past its prefix)."""
        layout = self.lease.layout(file)
        if layout is not None:
            self.in_order = InOrder(self.lease, self.c.archive, file, layout, md5=self.c.md5 is not None,
                                    window=window)

    def drop(self) -> None:
        """Stop the in-order digest: the file is read whole instead (e.g. a recheck may take pieces back)."""
        if self.in_order is not None:
            self.in_order.close()
            self.in_order = None

    def progress_at_last(self) -> dict[str, object]:
        """For torrent.completed: prefix_at_last, pieces in file order that had passed before the last
        one did; hashed_ahead, bytes already in the digest then; pieces_failed, hash failures the
        in-order digest was told of (each piece then taken only once its bytes match the SHA-1)."""
        f = self.in_order.frontier if self.in_order is not None else None
        at_last = f.at_last if f is not None else None
        return {"prefix_at_last": at_last[0] if at_last else None, "hashed_ahead": at_last[1] if at_last else None,
                "pieces_failed": f.failures if f is not None else None}

    def verify(self, total: int | None) -> tuple[Fetched, tuple[str, str, str] | None, bool]:
        """The file's digests against the pins: (fetched, what differs or None, taken in order)."""
        d = self._in_order_digests()
        if d is not None and mismatch(self.c, d) is None:
            return Fetched(self.c.archive, d.size, d.sha256, d.md5), None, True
        if d is not None:
            # Not a verdict: a write may have landed after its page was read. The whole file decides.
            self._reread("the digest taken as the pieces passed differs from the pin")

        def report(done: int) -> None:
            self.progress(FetchProgress(done, total, detail={"health": OK, "phase": "verifying"}))

        self.lease.save_resume(timeout=60.0)
        d = self._hash_file(report)
        bad = mismatch(self.c, d)
        if bad is not None:
            # Pieces that passed libtorrent's check may still sit in its store buffer (a resume
            # save's flush does not wait for them). Wait for every disk write (flush_cache is a
            # fence; waiting on it each time costs seconds on a 1 GB file), then read once more
            # before a full recheck. A digest that matches the pin needs no such wait: it is proof.
            if not self.lease.flush(timeout=FLUSH_TIMEOUT):
                self.log.warning("torrent.flush_timed_out", timeout=FLUSH_TIMEOUT)
            d = self._hash_file(report)
            bad = mismatch(self.c, d)
        return Fetched(self.c.archive, d.size, d.sha256, d.md5), bad, False

    def _hash_file(self, report: Callable[[int], None]) -> Digests:
        return hash_file(self.c.archive, md5=self.c.md5 is not None, stop=self.stop, progress=report)

    def _in_order_digests(self) -> Digests | None:
        """The digests taken as the pieces passed; None when the file must be read whole."""
        if self.in_order is None:
            return None
        d = self.in_order.digests(self.stop)
        if d is None:
            self._reread("a piece's bytes in the file differ from the torrent's SHA-1 after every write "
                         "was flushed")
        return d

    def _reread(self, reason: str) -> None:
        if self.in_order is not None:
            f = self.in_order.frontier
            self.log.warning("torrent.file_reread", piece=f.next, hashed=f.hashed, reason=reason)
        self.drop()
