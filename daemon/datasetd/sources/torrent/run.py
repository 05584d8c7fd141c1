"""One torrent fetch: add, wait for the file, diagnose, fall back, verify, leave.

The loop polls (4 times a second) rather than blocking on alerts so that `stop`,
progress and the health check all run on one clock; alerts arrive as typed
events through the lease's queue, pumped by the session's thread (lt/alerts.py).
What keeps the fetch going is watch.py's; the check against the pins is verify.py's.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from datasetd import logs
from datasetd.config.manifest import Component, TorrentSettings, TorrentSource
from datasetd.errors import DigestMismatch, PermanentError, TemporaryError
from datasetd.sources.base import Fetched, FetchProgress, ProgressFn
from datasetd.sources.torrent.lab import FanOut, lab_for, static_peers
from datasetd.sources.torrent.lt import Lease, Session
from datasetd.sources.torrent.types import AddRequest, Event, FileInfo, Status
from datasetd.sources.torrent.verify import Verifier
from datasetd.sources.torrent.watch import DISK_RETRY_FREE, Watch
from datasetd.state.durable import fsync_dir, fsync_file

log = logs.get()


@dataclass(frozen=True)
class Tuning:
    health_interval: float = 5.0
    resume_interval: float = 30.0
    lab_wait: float = 60.0  # fan-out: how long to wait for lab peers once our own share is done
    lab_grace: float = 3.0  # fan-out: a lab peer not connected this long is down; its share is dealt out
    slow_after: float = 120.0  # an empty DHT or a zero rate this long counts as a problem
    tick: float = 0.25
    report_every: float = 0.5


@dataclass(frozen=True)
class Spec:
    key: str
    torrent_file: Path | None = None
    magnet: str | None = None


class Download:
    def __init__(self, session: Session, settings: TorrentSettings, tuning: Tuning, component: Component,
                 spec: Spec, resume_path: Path, progress: ProgressFn, stop: threading.Event) -> None:
        assert isinstance(component.source, TorrentSource)
        self.session, self.settings, self.tuning = session, settings, tuning
        self.c, self.src, self.spec = component, component.source, spec
        self.resume_path, self.progress, self.stop = resume_path, progress, stop
        self.log = log.bind(component=component.name, info_hash=spec.key)
        self.peers = static_peers(settings.peers)
        self.lab = lab_for(settings.listen_interfaces, settings.peers)
        self.file: FileInfo | None = None
        self.fanout: FanOut | None = None
        self.fanout_done = False
        self.checking = False
        self.recheck_reason: str | None = None
        now = time.monotonic()
        self.start = self.last_progress = now
        self.best = 0
        self.next_fanout = self.next_report = 0.0
        self.lease: Lease
        self.verifier: Verifier
        self.watch: Watch

    # -- the fetch as a whole ----------------------------------------------------------------------

    def run(self) -> Fetched:
        req = AddRequest(key=self.spec.key, save_path=self.src.save_path, resume_path=self.resume_path,
                         torrent_file=self.spec.torrent_file, magnet=self.spec.magnet,
                         trackers=self.settings.trackers, peers=tuple(self.peers), files_off=True)
        self.lease, resumed, pieces = self.session.add(req)
        self.verifier = Verifier(self.c, self.lease, self.progress, self.stop, self.log)
        self.watch = Watch(self.session, self.lease, self.settings, self.src, self.peers,
                           interval=self.tuning.health_interval, slow_after=self.tuning.slow_after, log=self.log)
        self.log.info("torrent.added", save_path=str(self.src.save_path), file=self.src.file)
        if resumed:
            self.log.info("torrent.resumed", pieces=pieces, path=str(self.resume_path))
        try:
            fetched = self._download_and_verify()
        except BaseException:
            with contextlib.suppress(RuntimeError):  # e.g. close() ran meanwhile: keep the first error
                self._leave(seed=False)
            raise
        finally:
            self.verifier.drop()
        # The fetch is recorded verified when this returns: power loss after that must not leave
        # holes where libtorrent's writes sat in the page cache (it never flushes a file itself).
        fsync_file(self.c.archive)
        fsync_dir(self.c.archive.parent)  # and its name, made by libtorrent when the torrent was added
        self._leave(seed=True)
        return fetched

    def _download_and_verify(self) -> Fetched:
        for attempt in (1, 2):
            self._until_complete()
            finished = time.monotonic()
            at_last = self.verifier.progress_at_last()
            fetched, bad, in_order = self.verifier.verify(self.file.size if self.file else None)
            if bad is None:
                # verify_seconds: from the last piece passing to now.
                self.log.info("torrent.completed", size=fetched.size, sha256=fetched.sha256,
                              seconds=round(time.monotonic() - self.start, 1), hashed_in_order=in_order,
                              **at_last, verify_seconds=round(time.monotonic() - finished, 3))
                return fetched
            what, expected, actual = bad
            self.log.warning("torrent.digest_mismatch", algo=what, expected=expected, actual=actual,
                             attempt=attempt)
            if attempt == 2:
                break
            self._recheck(f"{what} mismatch after download")
        raise DigestMismatch(str(self.c.archive), what, expected, actual,
                             "libtorrent's piece hashes pass, so the torrent's data differs from the "
                             f"manifest's pin; check components.{self.c.name}.torrent and its digests")

    def _recheck(self, reason: str) -> None:
        self.verifier.drop()  # a recheck may take pieces back: the file is read whole after it
        self.recheck_reason = reason
        self.checking = True
        self.lease.force_recheck()

    def _leave(self, *, seed: bool) -> None:
        """Save resume data, then drop our lease (the torrent may stay, seeding)."""
        try:
            self.lease.save_resume(timeout=10.0)
        finally:
            if seed:
                self.session.release(self.lease, seed_ratio=self.settings.seed_ratio,
                                     seed_time=self.settings.seed_time)
            else:
                self.session.release(self.lease)

    # -- waiting for the file ---------------------------------------------------------------------

    def _until_complete(self) -> None:
        while True:
            if self.stop.is_set():
                raise TemporaryError(f"{self.c.archive}: torrent fetch stopped", 0)
            self._drain()
            now = time.monotonic()
            if self.file is None:
                self._take_metadata(now)
            st = self.lease.status()
            done = self.lease.file_done(self.file.index) if self.file else 0
            if done > self.best or self.checking or st.checking:
                # A recheck may find less than we had: count progress from what it leaves.
                self.best, self.last_progress = done, now
            if now >= self.next_fanout:
                self._update_fanout(now)
                if self.verifier.in_order is not None:
                    self.verifier.in_order.raise_window()
            if now >= self.watch.next_tick:
                self._health_tick(now, st)
            complete = self.file is not None and done >= self.file.size and not (self.checking or st.checking)
            if now >= self.next_report or complete:
                self._report(now, st, done)
            if complete:
                return
            self._check_stall(now, st)
            self._wait()

    def _wait(self) -> None:
        """One tick, cut short by the torrent's next alert: its finish is seen at once, not up to a
        tick later (a quarter of a second on every download). Stop is seen within the tick."""
        try:
            ev = self.lease.events.get(timeout=self.tuning.tick)
        except queue.Empty:
            return
        self._on_event(ev)

    def _drain(self) -> None:
        while True:
            try:
                ev = self.lease.events.get_nowait()
            except queue.Empty:
                return
            self._on_event(ev)

    def _on_event(self, ev: Event) -> None:
        if ev.kind == "state" and ev.message.startswith("checking"):
            if ev.message == "checking_files":
                reason = self.recheck_reason or "no usable resume data: checking the files on disk"
                self.log.info("torrent.rechecking", reason=reason)
                self.recheck_reason = None
            self.checking = True
        elif ev.kind == "checked":
            self.checking = False
            if self.verifier.in_order is not None:
                self.verifier.in_order.held()
        elif ev.kind == "metadata_received":
            self.log.info("torrent.metadata_received")
        elif ev.kind == "resume_rejected":
            self.recheck_reason = f"resume data rejected: {ev.message}"
        else:
            self.watch.on_event(ev)

    def _take_metadata(self, now: float) -> None:
        meta = self.lease.meta()
        if meta is None:
            return
        f = meta.find(self.src.file)
        if f is None:
            listing = ", ".join(x.path for x in meta.files[:5]) + (", ..." if len(meta.files) > 5 else "")
            raise PermanentError(f"{self.c.archive}: torrent {meta.key} has no file {self.src.file!r} "
                                 f"(it holds {listing}); fix components.{self.c.name}.file")
        if self.c.size is not None and f.size != self.c.size:
            raise DigestMismatch(str(self.c.archive), "size", str(self.c.size), str(f.size),
                                 f"the torrent's file differs from the manifest; check components.{self.c.name}")
        self.file = f
        self.lease.want_file(f.index, meta.num_files)
        # No window in a lab: its fan-out sets the piece priorities.
        self.verifier.follow(f, window=self.lab is None)
        if self.lab is not None:
            self.fanout = FanOut(self.lab, f.first_piece, f.last_piece, wait=self.tuning.lab_wait, now=now,
                                 grace=self.tuning.lab_grace)
            self._update_fanout(now)
            self.log.info("torrent.lab_ranked", rank=self.lab.rank, size=self.lab.size,
                          members=list(self.lab.members))

    def _update_fanout(self, now: float) -> None:
        self.next_fanout = now + 0.5
        fanout, lab = self.fanout, self.lab
        if fanout is None or lab is None or self.fanout_done:
            return
        was_lab = fanout.lab_phase()
        connected = frozenset(self.lease.connected_ips() & lab.others)
        if fanout.update(self.lease.have(), self.lease.lab_pieces(lab.others), now, connected):
            self.log.info("torrent.lab_redealt", live=sorted(fanout.live),
                          down=sorted(set(lab.members) - fanout.live), after=round(now - self.start, 1))
        # Hold outsiders before the lab's pieces open, so they are not the ones asked for them.
        self.lease.hold_outsiders(fanout.lab_phase())
        if fanout.lab_phase() and not was_lab:
            self.log.info("torrent.lab_phase_started", after=round(now - self.start, 1))
        # Diff against what libtorrent holds, not what we last sent: a file-priority change
        # (ours or another lease's) resets piece priorities when its disk job completes.
        actual = self.lease.piece_priorities()
        self.lease.prioritize([(p, v) for p, v in fanout.priorities().items() if actual[p] != v])
        if fanout.all_open():
            self.fanout_done = True
            if was_lab:
                self.lease.reannounce()
            self.log.info("torrent.lab_opened", after=round(now - self.start, 1))

    # -- health, stalls, fallbacks (watch.py) -----------------------------------------------------

    def _health_tick(self, now: float, st: Status) -> None:
        missing = (self.file.size - self.best) if self.file else DISK_RETRY_FREE
        if self.watch.tick(now, st, elapsed=now - self.start, idle=now - self.last_progress, missing=missing):
            self.next_report = 0.0  # the status shows a change of health at once, not at the next report

    def _report(self, now: float, st: Status, done: int) -> None:
        self.next_report = now + self.tuning.report_every
        pieces = num = 0
        if self.file is not None:
            have = self.lease.have()
            num = self.file.last_piece - self.file.first_piece + 1
            pieces = sum(1 for p in range(self.file.first_piece, self.file.last_piece + 1) if have[p])
        health = self.watch.health
        detail: dict[str, object] = {
            "peers": st.peers, "seeds": st.seeds, "dht_nodes": self.watch.dht_nodes,
            "pieces": pieces, "num_pieces": num, "health": health.problem, "hint": health.hint,
            "state": st.state,
        }
        total = self.file.size if self.file else self.c.size
        self.progress(FetchProgress(done, total, rate=float(st.download_rate), detail=detail))

    def _check_stall(self, now: float, st: Status) -> None:
        idle = now - self.last_progress
        if idle < self.settings.stall_timeout:
            return
        self._health_tick(now, st)
        health = self.watch.health
        self.log.warning("torrent.stalled", idle=round(idle), health=health.problem, hint=health.hint)
        if self.file is not None and self._fall_back():
            self.last_progress = now
            return
        raise TemporaryError(
            f"{self.c.archive}: torrent {self.spec.key} stalled for {idle:.0f}s: {health.problem}"
            + (f" ({health.hint})" if health.hint else ""),
            delay=min(self.settings.stall_timeout, 300.0),
        )

    def _fall_back(self) -> bool:
        """Web seeds once (watch.py), and every piece open: the lab no longer decides."""
        meta = self.lease.meta()
        if not self.watch.fall_back(meta.num_files if meta is not None else None):
            return False
        if self.fanout is not None and not self.fanout.all_open():
            self.fanout.open_all()
            self._update_fanout(time.monotonic())
        return True
