"""The only module that imports libtorrent (the model is deluge's core/alertmanager.py).

One `Session` owns a libtorrent session and one thread that pumps its alerts:
it writes resume data when libtorrent hands it over (on a timer and on
request), keeps session-wide health (listen sockets, DHT nodes), and routes
every torrent alert, as a typed `Event`, to the leases that follow that
torrent. libtorrent has no type stubs: the Any stays in this module.
"""

from __future__ import annotations

import atexit
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

import libtorrent as _libtorrent

from datasetd import logs
from datasetd.config.manifest import TorrentSettings
from datasetd.sources.torrent.lab import lab_for
from datasetd.sources.torrent.types import (
    AddRequest,
    Event,
    FileInfo,
    Layout,
    Meta,
    SessionHealth,
    Status,
    settings_pack,
)
from datasetd.state.durable import save_file

lt: Any = _libtorrent
log = logs.get()

_ALERT_MASK = (lt.alert_category.error | lt.alert_category.status | lt.alert_category.storage
               | lt.alert_category.tracker | lt.alert_category.performance_warning
               | lt.alert_category.piece_progress)  # piece_finished: the in-order digest follows them
_SAVE_FLAGS = lt.save_resume_flags_t.flush_disk_cache | lt.save_resume_flags_t.save_info_dict
LIBTORRENT_VERSION: str = lt.__version__
__all__ = ["AddRequest", "Event", "FileInfo", "Layout", "Lease", "Meta", "Session", "SessionHealth", "Status"]


def _pack(s: TorrentSettings) -> dict[str, object]:
    return settings_pack(s, LIBTORRENT_VERSION) | {"alert_mask": _ALERT_MASK, "alert_queue_size": 10000}


def info_key(hashes: Any) -> str:
    """The hex name a torrent goes by here: its v1 info-hash, or the v2 one for v2-only torrents."""
    return str(hashes.v1) if hashes.has_v1() else str(hashes.v2)


def magnet_key(uri: str) -> str:
    """The info-hash a magnet URI names; ValueError when it names none."""
    try:
        return info_key(lt.parse_magnet_uri(uri).info_hashes)
    except RuntimeError as e:
        raise ValueError(str(e)) from e


def read_meta(path: Path) -> Meta:
    """Files and pieces of a .torrent; ValueError if it is not one."""
    try:
        return _meta(lt.torrent_info(str(path)))
    except RuntimeError as e:
        raise ValueError(str(e)) from e


def _meta(ti: Any) -> Meta:
    fs = ti.layout()
    files = []
    for i in range(fs.num_files()):
        if fs.file_flags(i) & fs.flag_pad_file:
            continue
        size, offset = fs.file_size(i), fs.file_offset(i)
        first = offset // ti.piece_length()
        last = max(first, (offset + size - 1) // ti.piece_length())
        files.append(FileInfo(i, fs.file_path(i).replace("\\", "/"), size, first, last))
    return Meta(info_key(ti.info_hashes()), ti.name(), ti.num_pieces(), ti.piece_length(), tuple(files),
                fs.num_files())


def make_torrent(source: Path, dest: Path, *, piece_length: int = 256 * 1024,
                 web_seeds: Iterable[str] = (), trackers: Iterable[str] = ()) -> str:
    """Write a v1 .torrent of a file or directory to `dest`; return its info-hash."""
    ct = lt.create_torrent(lt.list_files(str(source)), piece_length, flags=lt.create_torrent.v1_only)
    for url in web_seeds:
        ct.add_url_seed(url)
    for tier, url in enumerate(trackers):
        ct.add_tracker(url, tier)
    lt.set_piece_hashes(ct, str(source.parent))
    data = lt.bencode(ct.generate())
    # The .torrent pins every piece hash: a torn one must never be read back.
    with save_file(dest, "wb") as f:
        cast(IO[bytes], f).write(data)
    return read_meta(dest).key


@dataclass
class _Entry:
    handle: Any
    key: str
    resume_path: Path | None
    leases: list[Lease] = field(default_factory=list)
    wanted: set[int] = field(default_factory=set)  # file indices some lease wants
    requested: int = 0  # resume saves asked for
    answered: int = 0  # resume saves libtorrent answered (saved or failed)
    flushed: int = 0  # cache_flushed alerts (ours, and those libtorrent posts on its own)
    seed_until: tuple[float | None, float | None] | None = None  # (ratio, seconds) after the last lease


class Lease:
    """One fetch's hold on a torrent; several fetches of one torrent share its handle."""

    def __init__(self, session: Session, entry: _Entry) -> None:
        self._session = session
        self._entry = entry
        self._h = entry.handle
        self.key = entry.key
        self.events: queue.Queue[Event] = queue.Queue()
        # Called on the session's thread with each piece that passed (True) or failed (False) its
        # hash check; not queued: the in-order digest reads a piece back while its pages are hot.
        self.on_piece: Callable[[int, bool], None] | None = None

    def meta(self) -> Meta | None:
        ti = self._h.torrent_file()
        return _meta(ti) if ti is not None else None

    def layout(self, f: FileInfo) -> Layout | None:
        """The pieces of file `f` and their v1 SHA-1s (None without metadata)."""
        ti = self._h.torrent_file()
        if ti is None:
            return None
        fs = ti.layout()
        pieces = range(f.first_piece, f.last_piece + 1)
        hashes = tuple(bytes(ti.hash_for_piece(p)) for p in pieces) if ti.info_hashes().has_v1() else None
        return Layout(offset=fs.file_offset(f.index), size=f.size, torrent_size=ti.total_size(),
                      piece_length=ti.piece_length(), first_piece=f.first_piece, last_piece=f.last_piece,
                      hashes=hashes)

    def status(self) -> Status:
        st = self._h.status()
        err = st.errc.message() if st.errc.value() else ""
        return Status(
            state=str(st.state), paused=bool(st.paused), error=err, upload_mode=bool(st.upload_mode),
            has_metadata=bool(st.has_metadata), peers=st.num_peers, seeds=st.num_seeds,
            peers_seen=st.list_peers, download_rate=st.download_payload_rate,
            upload_rate=st.upload_payload_rate, uploaded=st.all_time_upload,
            trackers=len(self._h.trackers()),
        )

    def have(self) -> list[bool]:
        return list(self._h.status(lt.status_flags_t.query_pieces).pieces)

    def file_done(self, index: int) -> int:
        """Bytes of the file in pieces that passed their hash check."""
        return int(self._h.file_progress(flags=lt.torrent_handle.piece_granularity)[index])

    def lab_pieces(self, ips: frozenset[str]) -> list[bool]:
        """Union of the pieces held by connected peers at `ips`."""
        union: list[bool] = []
        for p in self._h.get_peer_info():
            if p.ip[0] in ips and p.pieces:
                union = list(p.pieces) if not union else [a or b for a, b in zip(union, p.pieces, strict=False)]
        return union

    def hold_outsiders(self, on: bool) -> None:
        """Ask that peers outside the lab be cut off; see Session.hold_outsiders."""
        self._session.hold_outsiders(self, on)

    def reannounce(self) -> None:
        """Find peers again (e.g. the outsiders the lab phase cut off)."""
        self._h.force_reannounce()
        if self._session.settings.dht:
            self._h.force_dht_announce()

    def connected_ips(self) -> set[str]:
        return {p.ip[0] for p in self._h.get_peer_info()}

    def want_file(self, index: int, num_files: int) -> None:
        """This file at normal priority, and the files other leases of this torrent want; others 0."""
        self._session.want_file(self._entry, index, num_files)

    def piece_priorities(self) -> list[int]:
        return [int(p) for p in self._h.get_piece_priorities()]

    def prioritize(self, changes: list[tuple[int, int]]) -> None:
        if changes:
            self._h.prioritize_pieces(changes)

    def add_web_seed(self, url: str) -> None:
        self._h.add_url_seed(url)

    def connect(self, ip: str, port: int) -> None:
        self._h.connect_peer((ip, port))

    def force_recheck(self) -> None:
        self._h.force_recheck()

    def pause(self) -> None:
        self._h.pause()

    def resume_after_error(self) -> None:
        self._h.clear_error()
        self._h.unset_flags(lt.torrent_flags.upload_mode)
        self._h.resume()

    def save_resume(self, timeout: float) -> bool:
        """Ask for resume data (disk cache flushed first) and wait until it is written."""
        return self._session.save_resume([self._entry], timeout)

    def flush(self, timeout: float) -> bool:
        """Wait until every block libtorrent counts as downloaded is written to the file."""
        return self._session.flush(self._entry, timeout)


class Session:
    """A libtorrent session and its alert pump. The fetcher shares one per process."""

    def __init__(self, settings: TorrentSettings, *, resume_interval: float = 30.0,
                 stats_interval: float = 5.0) -> None:
        self.settings = settings
        self._ses: Any = lt.session(_pack(settings))
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()
        self._saved = threading.Condition(self._lock)
        self._resume_interval = resume_interval
        self._stats_interval = stats_interval
        self._listen_ok = False
        self._listen_errors: dict[str, str] = {}
        self._dht_nodes: int | None = None
        self._holding: set[int] = set()  # ids of leases that want outsiders held
        self._held = False
        self._closing = threading.Event()
        self.closed = False
        self._handlers = self._alert_handlers()
        self._thread = threading.Thread(target=self._pump, name="datasetd-libtorrent", daemon=True)
        self._thread.start()
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
        with self._lock:
            (self._holding.add if on else self._holding.discard)(id(lease))
            active = {id(x) for e in self._entries.values() for x in e.leases}
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

    def want_file(self, entry: _Entry, index: int, num_files: int) -> None:
        # Under the lock: two leases adding their files at once must not each send a list
        # that lacks the other's file, the last one sent switching the other's off.
        with self._lock:
            entry.wanted.add(index)
            entry.handle.prioritize_files([4 if i in entry.wanted else 0 for i in range(num_files)])

    def health(self) -> SessionHealth:
        with self._lock:
            err = None if self._listen_ok else "; ".join(sorted(set(self._listen_errors.values()))) or None
            return SessionHealth(listen_error=err, dht_nodes=self._dht_nodes)

    def add(self, req: AddRequest) -> tuple[Lease, bool, int]:
        """A lease on the torrent: (lease, loaded from resume data, pieces the resume data claims)."""
        # Built before the lock (it reads files) and wasted when the torrent is already here.
        params, resumed, pieces = _params(req)
        # One critical section from the look-up to the registration: two concurrent adds of one
        # torrent must not both miss it, or the second entry replaces the first and its lease
        # gets no alerts. Held across add_torrent too, so the pump cannot see this torrent's first
        # alerts (its checking state above all) before the lease that follows them is registered.
        with self._lock:
            entry = self._entries.get(req.key)
            if entry is not None:
                lease = Lease(self, entry)
                entry.leases.append(lease)
                entry.seed_until = None
                return lease, False, 0
            handle = self._ses.add_torrent(params)
            entry = _Entry(handle, req.key, req.resume_path)
            lease = Lease(self, entry)
            entry.leases.append(lease)
            self._entries[req.key] = entry
        for ip, port in req.peers:
            handle.connect_peer((ip, port))
        if req.upload_limit:
            handle.set_upload_limit(req.upload_limit)
        return lease, resumed, pieces

    def release(self, lease: Lease, *, seed_ratio: float | None = None,
                seed_time: float | None = None) -> None:
        """Drop a lease; the last one removes the torrent, or leaves it seeding until a limit."""
        with self._lock:
            entry = lease._entry
            if lease in entry.leases:
                entry.leases.remove(lease)
        self.hold_outsiders(lease, False)
        with self._lock:
            if entry.leases:
                return
            if seed_ratio or seed_time:
                entry.seed_until = (seed_ratio, time.monotonic() + seed_time if seed_time else None)
                return
        self._remove(entry)

    def _remove(self, entry: _Entry) -> None:
        with self._lock:
            if self._entries.get(entry.key) is not entry:
                return
            del self._entries[entry.key]
        self._ses.remove_torrent(entry.handle)

    def save_resume(self, entries: list[_Entry], timeout: float) -> bool:
        with self._lock:
            targets = []
            for e in entries:
                e.requested += 1
                targets.append((e, e.requested))
        for e, _ in targets:
            e.handle.save_resume_data(_SAVE_FLAGS)
        deadline = time.monotonic() + timeout
        with self._saved:
            return self._saved.wait_for(lambda: all(e.answered >= n for e, n in targets),
                                        max(0.0, deadline - time.monotonic()))

    def flush(self, entry: _Entry, timeout: float) -> bool:
        """flush_cache is a fence behind every pending disk write of the torrent; its alert says the
        fence passed. (A resume save's flush_disk_cache flag does not wait: its alert can come while
        passed pieces still sit in libtorrent's store buffer, and a read of the file then differs.)"""
        # The next alert, not a count of requests: libtorrent also posts one when the torrent
        # finishes and for each resume save, so a count of ours is met before our flush is done.
        with self._lock:
            n = entry.flushed + 1
        entry.handle.flush_cache()
        with self._saved:
            return self._saved.wait_for(lambda: entry.flushed >= n, timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Save every torrent's resume data, then stop the session."""
        if self.closed:
            return
        with self._lock:
            entries = list(self._entries.values())
        if not self.save_resume(entries, timeout):
            log.warning("torrent.resume_save_timed_out", torrents=len(entries), timeout=timeout)
        self._closing.set()
        # Any alert ends the pump's wait at once, not at its 200 ms timeout: a stats one will do.
        self._ses.post_session_stats()
        self._thread.join()
        self.closed = True
        self._ses.pause()
        # libtorrent's destructor waits for trackers and the disk thread; run it here, now.
        self._ses = None

    # -- the alert pump -------------------------------------------------------------------------

    def _pump(self) -> None:
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

    def _save_modified(self) -> None:
        with self._lock:
            entries = [e for e in self._entries.values() if e.resume_path is not None]
        for e in entries:
            if e.handle.need_save_resume_data():
                with self._lock:
                    e.requested += 1
                e.handle.save_resume_data(_SAVE_FLAGS)

    def _retire_seeds(self) -> None:
        with self._lock:
            seeding = [e for e in self._entries.values() if e.seed_until is not None]
        for e in seeding:
            ratio, until = e.seed_until or (None, None)
            st = e.handle.status()
            wanted = max(1, st.total_wanted)
            if (ratio and st.all_time_upload / wanted >= ratio) or (until and time.monotonic() >= until):
                # No resume save: the one written when the last lease left already says "complete",
                # and waiting for one here would block the very thread that writes it.
                self._remove(e)
                log.info("torrent.seeding_stopped", info_hash=e.key, uploaded=st.all_time_upload)

    def _alert_handlers(self) -> dict[str, Callable[[Any], None]]:
        """The session's own handler of each alert type it acts on (deluge's alertmanager: by type,
        not an if-ladder). Any other type becomes its lease's Event (`_EVENTS`), if it has one."""
        return {
            "session_stats_alert": self._on_stats,
            "listen_failed_alert": lambda a: self._on_listen(a, False),
            "listen_succeeded_alert": lambda a: self._on_listen(a, True),
            "save_resume_data_alert": lambda a: self._on_resume(a, True),
            "save_resume_data_failed_alert": lambda a: self._on_resume(a, False),
            "cache_flushed_alert": self._on_flushed,
            "piece_finished_alert": lambda a: self._on_piece(a, True),
            "hash_failed_alert": self._on_hash_failed,
        }

    def _on_alert(self, a: Any) -> None:
        self._handlers.get(type(a).__name__, self._publish_event)(a)

    def _on_stats(self, a: Any) -> None:
        self._dht_nodes = int(a.values.get("dht.dht_nodes", 0))

    def _on_hash_failed(self, a: Any) -> None:
        self._on_piece(a, False)  # the in-order digest forgets the piece; the lease hears it too
        self._publish_event(a)

    def _publish_event(self, a: Any) -> None:
        make = _EVENTS.get(type(a).__name__)
        if make is not None:
            self._publish(a, make(a))

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

    def _entry_of(self, a: Any) -> _Entry | None:
        try:
            ih = a.handle.info_hashes()
        except RuntimeError:  # the torrent was removed meanwhile
            return None
        # Both: a hybrid torrent added by its v2 hash gains a v1 hash with its metadata.
        keys = [str(ih.v1) if ih.has_v1() else "", str(ih.v2) if ih.has_v2() else ""]
        with self._lock:
            return next((self._entries[k] for k in keys if k in self._entries), None)

    def _on_resume(self, a: Any, ok: bool) -> None:
        entry = self._entry_of(a)
        if entry is None:
            return
        try:
            if ok and entry.resume_path is not None:
                pieces = _write_resume(entry.resume_path, a.params)
                log.info("torrent.resume_saved", info_hash=entry.key, pieces=pieces, path=str(entry.resume_path))
            elif not ok:
                log.warning("torrent.resume_save_failed", info_hash=entry.key, error=a.error.message())
        finally:
            with self._saved:
                entry.answered += 1
                self._saved.notify_all()

    def _on_flushed(self, a: Any) -> None:
        entry = self._entry_of(a)
        if entry is not None:
            with self._saved:
                entry.flushed += 1
                self._saved.notify_all()

    def _on_piece(self, a: Any, ok: bool) -> None:
        entry = self._entry_of(a)
        if entry is None:
            return
        with self._lock:
            listeners = [x.on_piece for x in entry.leases if x.on_piece is not None]
        for listener in listeners:
            listener(int(a.piece_index), ok)

    def _publish(self, a: Any, event: Event) -> None:
        entry = self._entry_of(a)
        if entry is None:
            return
        with self._lock:
            leases = list(entry.leases)
        for lease in leases:
            lease.events.put(event)


def _write_resume(path: Path, params: Any) -> int:
    data = lt.write_resume_data_buf(params)
    # Atomic replace: a crash mid-write keeps the previous resume file, never a torn one that
    # libtorrent would reject and so force a full recheck of the data.
    with save_file(path, "wb") as f:
        cast(IO[bytes], f).write(data)
    return sum(1 for p in params.have_pieces if p)


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


def _params(req: AddRequest) -> tuple[Any, bool, int]:
    params, pieces = _resume_params(req)
    resumed = params is not None
    if params is None:
        params = lt.parse_magnet_uri(req.magnet) if req.magnet else lt.add_torrent_params()
    if params.ti is None and req.torrent_file is not None:
        params.ti = lt.torrent_info(str(req.torrent_file))
    params.save_path = str(req.save_path)
    off = lt.torrent_flags.paused | lt.torrent_flags.auto_managed | lt.torrent_flags.upload_mode
    params.flags = (params.flags | lt.torrent_flags.update_subscribe) & ~off
    if req.files_off:
        params.flags |= lt.torrent_flags.default_dont_download
    params.trackers = list(params.trackers) + [t for t in req.trackers if t not in params.trackers]
    return params, resumed, pieces


def _resume_params(req: AddRequest) -> tuple[Any, int]:
    if req.resume_path is None or not req.resume_path.exists():
        return None, 0
    try:
        params = lt.read_resume_data(req.resume_path.read_bytes())
    except (RuntimeError, OSError) as e:
        log.warning("torrent.resume_unreadable", path=str(req.resume_path), error=str(e))
        return None, 0
    if info_key(params.info_hashes) != req.key:
        log.warning("torrent.resume_unreadable", path=str(req.resume_path), error="another torrent's data")
        return None, 0
    return params, sum(1 for p in params.have_pieces if p)
