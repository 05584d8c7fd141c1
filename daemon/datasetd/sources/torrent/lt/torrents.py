"""The torrents of one session: each one's entry in the session's table, and the leases on it.

Part of `lt`, the one package that imports libtorrent. `Session.add` registers an `Entry`
in the session's `Torrents` and hands the fetch a `Lease`; the alert pump (alerts.py) finds
each alert's entry here and reaches that torrent's leases through it; the last lease
released removes the torrent.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import libtorrent as _libtorrent

from datasetd.sources.torrent.lt.meta import layout_of, meta_of
from datasetd.sources.torrent.types import Event, FileInfo, Layout, Meta, Status

if TYPE_CHECKING:
    from datasetd.sources.torrent.lt.session import Session

lt: Any = _libtorrent
SAVE_FLAGS = lt.save_resume_flags_t.flush_disk_cache | lt.save_resume_flags_t.save_info_dict


@dataclass
class Entry:
    handle: Any
    key: str
    resume_path: Path | None
    leases: list[Lease] = field(default_factory=list)
    wanted: set[int] = field(default_factory=set)  # file indices some lease wants
    requested: int = 0  # resume saves asked for
    answered: int = 0  # resume saves libtorrent answered (saved or failed)
    flush_requests: int = 0  # flush_cache calls of ours
    finishes: int = 0  # torrent_finished alerts: libtorrent flushes the torrent's cache at each
    flushed: int = 0  # cache_flushed alerts, for either kind of flush
    seed_until: tuple[float | None, float | None] | None = None  # (ratio, seconds) after the last lease


class Torrents:
    """A session's entries by info-hash, and the one lock (with its condition) every thread takes."""

    def __init__(self) -> None:
        self.by_key: dict[str, Entry] = {}
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)  # notified as resume saves and flushes are answered

    def entries(self) -> list[Entry]:
        with self.lock:
            return list(self.by_key.values())

    def of_alert(self, a: Any) -> Entry | None:
        """The entry an alert is about; None once its torrent is gone."""
        try:
            ih = a.handle.info_hashes()
        except RuntimeError:  # the torrent was removed meanwhile
            return None
        # Both: a hybrid torrent added by its v2 hash gains a v1 hash with its metadata.
        keys = [str(ih.v1) if ih.has_v1() else "", str(ih.v2) if ih.has_v2() else ""]
        with self.lock:
            return next((self.by_key[k] for k in keys if k in self.by_key), None)

    def ask_resume(self, entry: Entry) -> int:
        """Ask libtorrent for the entry's resume data; the count its answer must reach."""
        with self.lock:
            entry.requested += 1
            n = entry.requested
        entry.handle.save_resume_data(SAVE_FLAGS)
        return n

    def count_answer(self, entry: Entry, *, flushed: bool = False, finished: bool = False) -> None:
        """A resume save, a cache flush (`flushed`) or the torrent's finish (`finished`: a flush
        libtorrent asks for itself) was posted for the entry: wake its waiters."""
        with self.changed:
            if flushed:
                entry.flushed += 1
            elif finished:
                entry.finishes += 1
            else:
                entry.answered += 1
            self.changed.notify_all()


class Lease:
    """One fetch's hold on a torrent; several fetches of one torrent share its handle."""

    def __init__(self, session: Session, entry: Entry) -> None:
        self._session = session
        self._entry = entry
        self._h = entry.handle
        self.key = entry.key
        self.events: queue.Queue[Event] = queue.Queue()
        # Called on the session's thread with each piece that passed (True) or failed (False) its
        # hash check; not queued: the in-order digest reads a piece back while its pages are hot.
        self.on_piece: Callable[[int, bool], None] | None = None

    @property
    def entry(self) -> Entry:
        return self._entry

    def meta(self) -> Meta | None:
        ti = self._h.torrent_file()
        return meta_of(ti) if ti is not None else None

    def layout(self, f: FileInfo) -> Layout | None:
        """The pieces of file `f` and their v1 SHA-1s (None without metadata)."""
        ti = self._h.torrent_file()
        return layout_of(ti, f) if ti is not None else None

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
