"""The alert pump: the one thread that empties a session's alert queue (the model is deluge's
core/alertmanager.py).

Part of `lt`, the one package that imports libtorrent. `Session` starts one `AlertPump`;
each alert goes by its type to the pump's own handler (`_alert_handlers`: resume data
written when libtorrent hands it over, flushes counted, session-wide health kept, piece
checks passed on to the in-order digest) or, as a typed `Event`, to the queues of the
leases that follow its torrent (`_EVENTS`). Between alerts the pump runs the session's
timers: stats, resume saves of modified torrents, the end of seeding.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import libtorrent as _libtorrent

from datasetd import logs
from datasetd.sources.torrent.lt.resume import write_resume
from datasetd.sources.torrent.lt.torrents import Entry, Torrents
from datasetd.sources.torrent.types import Event, SessionHealth

lt: Any = _libtorrent
log = logs.get()


class AlertPump:
    """Pumps the alerts of libtorrent session `ses`, whose torrents are `torrents`, on its own thread."""

    def __init__(self, ses: Any, torrents: Torrents, *, remove: Callable[[Entry], None],
                 resume_interval: float, stats_interval: float) -> None:
        self._ses = ses
        self._torrents = torrents
        self._remove = remove  # the session's: a torrent whose seeding limit is reached goes
        self._resume_interval = resume_interval
        self._stats_interval = stats_interval
        self._lock = threading.Lock()  # the session-wide health below
        self._listen_ok = False
        self._listen_errors: dict[str, str] = {}
        self._dht_nodes: int | None = None
        self._closing = threading.Event()
        self._handlers = self._alert_handlers()
        self._thread = threading.Thread(target=self._run, name="datasetd-libtorrent", daemon=True)
        self._thread.start()

    def health(self) -> SessionHealth:
        with self._lock:
            err = None if self._listen_ok else "; ".join(sorted(set(self._listen_errors.values()))) or None
            return SessionHealth(listen_error=err, dht_nodes=self._dht_nodes)

    def stop(self) -> None:
        """End the thread; its last round handles the alerts already posted."""
        self._closing.set()
        # Any alert ends the pump's wait at once, not at its 200 ms timeout: a stats one will do.
        self._ses.post_session_stats()
        self._thread.join()

    def _run(self) -> None:
        next_stats = next_save = 0.0
        while not self._closing.is_set():
            self._ses.wait_for_alert(200)
            for alert in self._ses.pop_alerts():
                try:
                    self._on_alert(alert)
                except Exception:  # one bad alert must not stop resume saving for all
                    log.exception("torrent.alert_failed", alert=type(alert).__name__)
            now = time.monotonic()
            try:
                if now >= next_stats:
                    next_stats = now + self._stats_interval
                    self._ses.post_session_stats()
                    self._retire_seeds()
                if now >= next_save:
                    next_save = now + self._resume_interval
                    self._save_modified()
            except RuntimeError:
                pass  # a torrent removed while we looked at it (invalid handle); next round is fresh

    # -- the timers -------------------------------------------------------------------------------

    def _save_modified(self) -> None:
        for e in self._torrents.entries():
            if e.resume_path is not None and e.handle.need_save_resume_data():
                self._torrents.ask_resume(e)

    def _retire_seeds(self) -> None:
        for e in self._torrents.entries():
            limits = e.seed_until  # read once: a new lease on the torrent sets it to None
            if limits is None:
                continue
            ratio, until = limits
            st = e.handle.status()
            wanted = max(1, st.total_wanted)
            if (ratio and st.all_time_upload / wanted >= ratio) or (until and time.monotonic() >= until):
                # No resume save: the one written when the last lease left already says "complete",
                # and waiting for one here would block the very thread that writes it.
                self._remove(e)
                log.info("torrent.seeding_stopped", info_hash=e.key, uploaded=st.all_time_upload)

    # -- the alerts, by type ----------------------------------------------------------------------

    def _alert_handlers(self) -> dict[str, Callable[[Any], None]]:
        """The pump's own handler of each alert type it acts on (deluge's alertmanager: by type,
        not an if-ladder). Any other type becomes its lease's Event (`_EVENTS`), if it has one."""
        return {
            "session_stats_alert": self._on_stats,
            "listen_failed_alert": lambda a: self._on_listen(a, False),
            "listen_succeeded_alert": lambda a: self._on_listen(a, True),
            "save_resume_data_alert": lambda a: self._on_resume(a, True),
            "save_resume_data_failed_alert": lambda a: self._on_resume(a, False),
            "cache_flushed_alert": self._on_flushed,
            "torrent_finished_alert": self._on_finished,
            "piece_finished_alert": lambda a: self._on_piece(a, True),
            "hash_failed_alert": self._on_hash_failed,
        }

    def _on_alert(self, a: Any) -> None:
        self._handlers.get(type(a).__name__, self._publish_event)(a)

    def _on_stats(self, a: Any) -> None:
        with self._lock:
            self._dht_nodes = int(a.values.get("dht.dht_nodes", 0))

    def _on_listen(self, a: Any, ok: bool) -> None:
        if a.socket_type != lt.socket_type_t.tcp:
            return
        where = f"{a.address}:{a.port}"
        with self._lock:
            if ok:
                self._listen_ok = True
                self._listen_errors.pop(where, None)
            else:
                self._listen_errors[where] = f"{where}: {a.error.message()}"
        if not ok:
            log.warning("torrent.listen_failed", address=where, error=a.error.message())

    def _on_resume(self, a: Any, ok: bool) -> None:
        entry = self._torrents.of_alert(a)
        if entry is None:
            return
        try:
            if ok and entry.resume_path is not None:
                pieces = write_resume(entry.resume_path, a.params)
                log.info("torrent.resume_saved", info_hash=entry.key, pieces=pieces, path=str(entry.resume_path))
            elif not ok:
                log.warning("torrent.resume_save_failed", info_hash=entry.key, error=a.error.message())
        finally:
            self._torrents.count_answer(entry, flushed=False)

    def _on_flushed(self, a: Any) -> None:
        entry = self._torrents.of_alert(a)
        if entry is not None:
            self._torrents.count_answer(entry, flushed=True)

    def _on_finished(self, a: Any) -> None:
        entry = self._torrents.of_alert(a)
        if entry is not None:
            self._torrents.count_answer(entry, finished=True)  # before its flush's alert, always
        self._publish_event(a)

    def _on_hash_failed(self, a: Any) -> None:
        self._on_piece(a, False)  # the in-order digest forgets the piece; the lease hears it too
        self._publish_event(a)

    def _on_piece(self, a: Any, ok: bool) -> None:
        entry = self._torrents.of_alert(a)
        if entry is None:
            return
        with self._torrents.lock:
            listeners = [x.on_piece for x in entry.leases if x.on_piece is not None]
        for listener in listeners:
            listener(int(a.piece_index), ok)

    def _publish_event(self, a: Any) -> None:
        make = _EVENTS.get(type(a).__name__)
        if make is None:
            return
        entry = self._torrents.of_alert(a)
        if entry is None:
            return
        event = make(a)
        with self._torrents.lock:
            leases = list(entry.leases)
        for lease in leases:
            lease.events.put(event)


# Each alert type a lease hears about, and the Event it becomes.
_EVENTS: dict[str, Callable[[Any], Event]] = {
    "state_changed_alert": lambda a: Event("state", str(a.state)),
    "tracker_error_alert": lambda a: Event("tracker_error", a.failure_reason() or a.error_message()
                                           or a.error.message(), url=a.tracker_url()),
    "tracker_reply_alert": lambda a: Event("tracker_reply", url=a.tracker_url(), count=a.num_peers),
    "file_error_alert": lambda a: Event("file_error", f"{a.filename()}: {a.error.message()}"),
    "url_seed_alert": lambda a: Event("web_seed_error", a.error_message() or a.error.message(), url=a.server_url()),
    "hash_failed_alert": lambda a: Event("hash_failed", count=a.piece_index),
    "fastresume_rejected_alert": lambda a: Event("resume_rejected", a.error.message()),
    "metadata_received_alert": lambda a: Event("metadata_received", a.message()),
    "torrent_checked_alert": lambda a: Event("checked", a.message()),
    "torrent_finished_alert": lambda a: Event("finished", a.message()),
    "torrent_error_alert": lambda a: Event("torrent_error", a.message()),
}
