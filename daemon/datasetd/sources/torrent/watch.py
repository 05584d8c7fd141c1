"""What keeps one torrent fetch going: its health, disk errors retried, static peers redialled,
and the one fallback to web seeds and mirrors when it stalls.

run.Download feeds a `Watch` the lease's events (tracker, web seed and disk errors) and
calls `tick` every few seconds; the diagnosis itself is pure (health.py) and shows in
status.json. When the download stalls, `fall_back` adds the web seeds once; without
any the fetch fails as a TemporaryError naming the problem.
"""

from __future__ import annotations

import shutil
import time
from typing import Any

from datasetd.config.manifest import TorrentSettings, TorrentSource
from datasetd.sources.torrent.health import OK, Health, Observation, diagnose
from datasetd.sources.torrent.lt import Lease, Session
from datasetd.sources.torrent.types import Event, Status

DISK_RETRY_FREE = 64 * 1024 * 1024  # free bytes that make a paused, disk-full torrent worth resuming


def redact_url(url: str) -> str:
    """The HTTP source's redact_url, imported at first use: with it comes httpx (~45 ms of a cold
    start), which a fetch from a .torrent file with no tracker never needs."""
    from datasetd.sources.http.util import redact_url as redact

    return redact(url)


class Watch:
    """The health of one fetch of `src` through `lease`, from its events and a look every few seconds."""

    def __init__(self, session: Session, lease: Lease, settings: TorrentSettings, src: TorrentSource,
                 peers: list[tuple[str, int]], *, interval: float, slow_after: float, log: Any) -> None:
        self.session, self.lease, self.settings, self.src, self.peers = session, lease, settings, src, peers
        self.interval, self.slow_after, self.log = interval, slow_after, log
        self.health = Health(OK)
        self.tracker_errors: dict[str, str] = {}
        self.disk_error: str | None = None
        self.disk_error_at = 0.0
        self.web_seed_error: str | None = None
        self.dht_nodes: int | None = None
        self.fell_back = False
        self.next_tick = 0.0

    def on_event(self, ev: Event) -> None:
        """The errors and replies the diagnosis weighs; a disk error pauses the torrent until fixed."""
        if ev.kind == "file_error":
            self.disk_error, self.disk_error_at = ev.message, time.monotonic()
            self.lease.pause()
            self.next_tick = 0.0
        elif ev.kind == "tracker_error":
            self.tracker_errors[redact_url(ev.url)] = ev.message
        elif ev.kind == "tracker_reply":
            self.tracker_errors.pop(redact_url(ev.url), None)
        elif ev.kind == "web_seed_error":
            self.web_seed_error = f"{redact_url(ev.url)}: {ev.message}"

    def tick(self, now: float, st: Status, *, elapsed: float, idle: float, missing: int) -> bool:
        """Redial static peers, retry a disk error, diagnose; True when the health changed.
        `missing`: bytes of the file still to come (what a disk must have free to resume)."""
        self.next_tick = now + self.interval
        connected = self.lease.connected_ips()
        for ip, port in self.peers:
            if ip not in connected:
                self.lease.connect(ip, port)
        self._retry_disk(now, missing)
        sh = self.session.health()
        self.dht_nodes = sh.dht_nodes
        obs = Observation(
            elapsed=elapsed, idle=idle, has_metadata=st.has_metadata,
            listen_error=sh.listen_error, dht_enabled=self.settings.dht, dht_nodes=sh.dht_nodes,
            trackers=st.trackers, tracker_errors=dict(self.tracker_errors), peers=st.peers,
            seeds=st.seeds, peers_seen=st.peers_seen, download_rate=st.download_rate,
            disk_error=self.disk_error, web_seed_error=self.web_seed_error,
        )
        slow = min(self.slow_after, self.settings.stall_timeout)
        health = diagnose(obs, slow_after=slow, settle=min(30.0, slow))
        if health == self.health:
            return False
        emit = self.log.info if health.ok else self.log.warning
        emit("torrent.health", health=health.problem, hint=health.hint, peers=st.peers,
             peers_seen=st.peers_seen, dht_nodes=sh.dht_nodes)
        self.health = health
        return True

    def _retry_disk(self, now: float, missing: int) -> None:
        if self.disk_error is None or now - self.disk_error_at < self.interval:
            return
        try:
            free = shutil.disk_usage(self.src.save_path).free
        except OSError:
            return
        if free >= min(DISK_RETRY_FREE, missing):
            self.log.info("torrent.disk_retried", free=free, error=self.disk_error)
            self.disk_error = None
            self.lease.resume_after_error()

    def fall_back(self, num_files: int | None) -> bool:
        """Add web seeds (and mirrors, for a single-file torrent) once; libtorrent then fetches over
        HTTP. `num_files`: the torrent's, None without metadata. True when seeds were added."""
        if self.fell_back:
            return False
        self.fell_back = True
        single = num_files == 1
        urls = list(self.src.web_seeds) + (list(self.src.mirrors) if single else [])
        if self.src.mirrors and not single:
            self.log.warning("torrent.mirrors_skipped",
                             reason="a mirror is one file's URL; libtorrent can use it only for a "
                                    "single-file torrent: list a base URL under web_seeds instead")
        if not urls:
            return False
        for url in urls:
            self.lease.add_web_seed(url)
        self.log.info("torrent.fell_back", via="web_seed", urls=[redact_url(u) for u in urls])
        return True
