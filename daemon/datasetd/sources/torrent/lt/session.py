"""A libtorrent session: its settings, the torrents added to it and released, the lab's IP filter, close.

Part of `lt`, the one package that imports libtorrent. The fetcher shares one `Session`
per process among concurrent fetches; each fetch holds a `Lease` (torrents.py) on its
torrent. The session's alerts are pumped by an `AlertPump` (alerts.py) on one thread.
libtorrent has no type stubs worth their name here: the Any stays inside `lt`.
"""

from __future__ import annotations

import atexit
import time
from typing import Any

import libtorrent as _libtorrent

from datasetd import logs
from datasetd.config.manifest import TorrentSettings
from datasetd.sources.torrent.lab import lab_for
from datasetd.sources.torrent.lt.alerts import AlertPump
from datasetd.sources.torrent.lt.resume import add_params
from datasetd.sources.torrent.lt.torrents import Entry, Lease, Torrents
from datasetd.sources.torrent.types import AddRequest, SessionHealth, settings_pack

lt: Any = _libtorrent
log = logs.get()

_ALERT_MASK = (lt.alert_category.error | lt.alert_category.status | lt.alert_category.storage
               | lt.alert_category.tracker | lt.alert_category.performance_warning
               | lt.alert_category.piece_progress)  # piece_finished: the in-order digest follows them
LIBTORRENT_VERSION: str = lt.__version__


def _pack(s: TorrentSettings) -> dict[str, object]:
    return settings_pack(s, LIBTORRENT_VERSION) | {"alert_mask": _ALERT_MASK, "alert_queue_size": 10000}


class Session:
    """A libtorrent session, its torrents and its alert pump. The fetcher shares one per process."""

    def __init__(self, settings: TorrentSettings, *, resume_interval: float = 30.0,
                 stats_interval: float = 5.0) -> None:
        self.settings = settings
        self._ses: Any = lt.session(_pack(settings))
        self._torrents = Torrents()
        self._holding: set[int] = set()  # ids of leases that want outsiders held
        self._held = False
        self.closed = False
        self._pump = AlertPump(self._ses, self._torrents, remove=self._remove,
                               resume_interval=resume_interval, stats_interval=stats_interval)
        # A session still alive at interpreter exit aborts the process (SIGABRT) while its alert
        # thread is torn down: close it first, whichever path forgot to (close() is idempotent).
        atexit.register(self.close, 2.0)

    def apply(self, settings: TorrentSettings) -> None:
        if settings != self.settings:
            self._ses.apply_settings(_pack(settings))
            self.settings = settings

    def hold_outsiders(self, lease: Lease, on: bool) -> None:
        """Block every peer outside the lab while all downloading leases of this session ask for it.

        libtorrent 2 has no per-peer download control, and a rate limit is not enough: the
        socket buffers of a fast connection hold megabytes. The IP filter disconnects them.
        Asking all leases keeps one torrent's lab phase from starving another's own share.
        """
        lab = lab_for(self.settings.listen_interfaces, self.settings.peers)
        if lab is None:
            return
        with self._torrents.lock:
            (self._holding.add if on else self._holding.discard)(id(lease))
            active = {id(x) for e in self._torrents.by_key.values() for x in e.leases}
            hold = bool(self._holding) and active <= self._holding
            changed, self._held = hold != self._held, hold
        if not changed:
            return
        f = lt.ip_filter()
        if hold:
            f.add_rule("0.0.0.0", "255.255.255.255", 1)  # noqa: S104 (an IP range to block, not a bind)
            f.add_rule("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 1)
            for ip in lab.others:
                f.add_rule(ip, ip, 0)
        self._ses.set_ip_filter(f)
        log.info("torrent.outsiders_held" if hold else "torrent.outsiders_released", lab=list(lab.members))

    def want_file(self, entry: Entry, index: int, num_files: int) -> None:
        # Under the lock: two leases adding their files at once must not each send a list
        # that lacks the other's file, the last one sent switching the other's off.
        with self._torrents.lock:
            entry.wanted.add(index)
            entry.handle.prioritize_files([4 if i in entry.wanted else 0 for i in range(num_files)])

    def health(self) -> SessionHealth:
        return self._pump.health()

    def add(self, req: AddRequest) -> tuple[Lease, bool, int]:
        """A lease on the torrent: (lease, loaded from resume data, pieces the resume data claims)."""
        # Built before the lock (it reads files) and wasted when the torrent is already here.
        params, resumed, pieces = add_params(req)
        # One critical section from the look-up to the registration: two concurrent adds of one
        # torrent must not both miss it, or the second entry replaces the first and its lease
        # gets no alerts. Held across add_torrent too, so the pump cannot see this torrent's first
        # alerts (its checking state above all) before the lease that follows them is registered.
        with self._torrents.lock:
            entry = self._torrents.by_key.get(req.key)
            if entry is not None:
                lease = Lease(self, entry)
                entry.leases.append(lease)
                entry.seed_until = None
                return lease, False, 0
            handle = self._ses.add_torrent(params)
            entry = Entry(handle, req.key, req.resume_path)
            lease = Lease(self, entry)
            entry.leases.append(lease)
            self._torrents.by_key[req.key] = entry
        for ip, port in req.peers:
            handle.connect_peer((ip, port))
        if req.upload_limit:
            handle.set_upload_limit(req.upload_limit)
        return lease, resumed, pieces

    def release(self, lease: Lease, *, seed_ratio: float | None = None,
                seed_time: float | None = None) -> None:
        """Drop a lease; the last one removes the torrent, or leaves it seeding until a limit."""
        entry = lease.entry
        with self._torrents.lock:
            if lease in entry.leases:
                entry.leases.remove(lease)
        self.hold_outsiders(lease, False)
        with self._torrents.lock:
            if entry.leases:
                return
            if seed_ratio or seed_time:
                entry.seed_until = (seed_ratio, time.monotonic() + seed_time if seed_time else None)
                return
        self._remove(entry)

    def _remove(self, entry: Entry) -> None:
        with self._torrents.lock:
            if self._torrents.by_key.get(entry.key) is not entry:
                return
            del self._torrents.by_key[entry.key]
        self._ses.remove_torrent(entry.handle)

    def save_resume(self, entries: list[Entry], timeout: float) -> bool:
        targets = [(e, self._torrents.ask_resume(e)) for e in entries]
        deadline = time.monotonic() + timeout
        with self._torrents.changed:
            return self._torrents.changed.wait_for(lambda: all(e.answered >= n for e, n in targets),
                                                   max(0.0, deadline - time.monotonic()))

    def flush(self, entry: Entry, timeout: float) -> bool:
        """flush_cache is a fence behind every pending disk write of the torrent; its alert says the
        fence passed. (A resume save's flush_disk_cache flag does not wait: its alert can come while
        passed pieces still sit in libtorrent's store buffer, and a read of the file then differs.)

        True once every flush asked for so far has posted its cache_flushed alert: ours, and the
        one libtorrent asks for as the torrent finishes (it posts torrent_finished first, so a
        finish flush whose alert is already counted is counted among those asked for too). Then
        ours has passed whatever the order of the alerts: until it does, at most every other
        flush is counted, one fewer than asked for. (libtorrent 2.1 posts cache_flushed for
        nothing else while a torrent downloads; a resume save's flush posts none.)"""
        with self._torrents.lock:
            entry.flush_requests += 1
        entry.handle.flush_cache()
        with self._torrents.changed:
            return self._torrents.changed.wait_for(
                lambda: entry.flushed >= entry.flush_requests + entry.finishes, timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Save every torrent's resume data, then stop the session."""
        if self.closed:
            return
        entries = self._torrents.entries()
        if not self.save_resume(entries, timeout):
            log.warning("torrent.resume_save_timed_out", torrents=len(entries), timeout=timeout)
        self._pump.stop()
        self.closed = True
        self._ses.pause()
        # libtorrent's destructor waits for trackers and the disk thread; run it here, now.
        self._ses = None
