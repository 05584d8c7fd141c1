"""BitTorrent source: one component's file out of a torrent, checked by datasetd itself.

All libtorrent calls live in `lt/` (one session per process, shared by
concurrent fetches, its alerts pumped by one thread); the fetch loop is in
`run`, health diagnosis in `health`, lab fan-out in `lab`.

What is on disk (libtorrent writes the file in place, not under a temporary name):
- `save_path/file`: the file, sparse at full length from the first write. It is
  NOT verified until `fetch` returns Fetched (the executor trusts nothing else);
  after a crash the next fetch resumes it from resume data (or a recheck).
- `save_path/.<infohash>.parts`: libtorrent's part file for the bytes of pieces
  shared with files of the torrent this component does not want.
- `<state_dir>/torrent/<infohash>.torrent`: the metadata (copied from a path,
  or fetched from a URL; for a magnet the resume data carries it).
- `<state_dir>/torrent/<infohash>.resume`: libtorrent's resume data, replaced
  atomically on a timer, when a fetch ends and at close(); with it a restart does
  not re-hash the data, without it libtorrent checks the existing file instead of
  downloading it again.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import structlog

from datasetd.config.manifest import Component, Manifest, TorrentSettings, TorrentSource
from datasetd.errors import PermanentError, TemporaryError
from datasetd.sources.base import Fetched, ProgressFn
from datasetd.sources.torrent import lt
from datasetd.sources.torrent.run import Download, Spec, Tuning
from datasetd.sources.torrent.watch import redact_url
from datasetd.state.durable import fsync_dir

MAX_TORRENT_FILE = 64 << 20  # a .torrent of a 1 TB file with 16 KiB pieces is ~1.3 MB; refuse absurd ones

_HEX = re.compile(r"[0-9a-fA-F]{40}|[0-9a-fA-F]{64}")
# One libtorrent session per process: concurrent fetches share its listen socket, peers and limits.
_shared: lt.Session | None = None
_shared_lock = threading.Lock()

__all__ = ["TorrentFetcher", "Tuning"]


class TorrentFetcher:
    """Implements datasetd.sources.base.Source for TorrentSource components."""

    def __init__(self, settings: TorrentSettings, state_dir: Path, *,
                 fetch_url: Callable[[str, Path], Path] | None = None, health_interval: float = 5.0,
                 resume_interval: float = 30.0, lab_wait: float = 60.0, lab_grace: float = 3.0,
                 slow_after: float = 120.0) -> None:
        self.settings = settings
        self.dir = state_dir / "torrent"
        self.fetch_url = fetch_url
        self.tuning = Tuning(health_interval=health_interval, resume_interval=resume_interval,
                             lab_wait=lab_wait, lab_grace=lab_grace, slow_after=slow_after)
        self._lock = threading.Lock()  # two fetches of one torrent must not write one .torrent at once

    def fetch(self, component: Component, progress: ProgressFn, stop: threading.Event) -> Fetched:
        src = component.source
        if not isinstance(src, TorrentSource):
            raise TypeError(f"{component.name}: not a torrent component")
        self.dir.mkdir(parents=True, exist_ok=True)
        src.save_path.mkdir(parents=True, exist_ok=True)
        spec = self._spec(component, src)
        session = _shared_session(self.settings, resume_interval=self.tuning.resume_interval,
                                  stats_interval=min(5.0, self.tuning.health_interval))
        resume = self.dir / f"{spec.key}.resume"
        try:
            return Download(session, self.settings, self.tuning, component, spec, resume, progress, stop).run()
        except RuntimeError as e:  # libtorrent's way to say "invalid handle", e.g. close() ran meanwhile
            raise TemporaryError(f"{component.archive}: libtorrent: {e}", 30.0) from e

    def close(self) -> None:
        """Save the resume data of every torrent, then stop the session."""
        global _shared
        with _shared_lock:
            ses, _shared = _shared, None
        if ses is not None:
            ses.close(timeout=10.0)

    # -- what `torrent = "..."` names ---------------------------------------------------------------

    def _spec(self, c: Component, src: TorrentSource) -> Spec:
        t = src.torrent.strip()
        if _HEX.fullmatch(t):
            uri = f"magnet:?xt=urn:btih:{t.lower()}" if len(t) == 40 else f"magnet:?xt=urn:btmh:1220{t.lower()}"
            return Spec(t.lower(), magnet=uri)
        if t.startswith("magnet:"):
            try:
                return Spec(lt.magnet_key(t), magnet=t)
            except ValueError as e:
                raise PermanentError(f"components.{c.name}.torrent: not a usable magnet URI ({e}); "
                                     "give an info-hash, a magnet URI, a .torrent path or URL") from e
        if t.startswith(("http://", "https://")):
            return self._from_url(c, t)
        path = Path(t) if Path(t).is_absolute() else self.dir.parent.parent / t
        return self._from_file(c, path, f"components.{c.name}.torrent ({path})")

    def _from_url(self, c: Component, url: str) -> Spec:
        cached = self.dir / f"url-{hashlib.sha256(url.encode()).hexdigest()[:20]}.torrent"
        with self._lock:
            if not cached.exists():
                if self.fetch_url is None:
                    raise PermanentError(f"components.{c.name}.torrent: {redact_url(url)} needs an HTTP "
                                         "fetcher and none was given; download the .torrent and give its path")
                tmp = cached.with_suffix(".part")
                with structlog.contextvars.bound_contextvars(component=c.name):  # its events name c
                    self.fetch_url(url, tmp)
                _check_torrent(c, tmp, redact_url(url))
                # Rename only a .torrent that parses: a crash before it leaves no half-file to trust.
                os.replace(tmp, cached)
                fsync_dir(self.dir)
        return self._from_file(c, cached, redact_url(url))

    def _from_file(self, c: Component, path: Path, shown: str) -> Spec:
        key = _check_torrent(c, path, shown)
        kept = self.dir / f"{key}.torrent"
        # Locked: two components of one torrent fetched at once would share one .tmp name.
        with self._lock:
            if path != kept and not kept.exists():
                tmp = kept.with_suffix(".tmp")
                shutil.copyfile(path, tmp)
                # The copy is what later runs read: it must be whole before it has its name.
                with open(tmp, "rb") as f:
                    os.fsync(f.fileno())
                os.replace(tmp, kept)
                fsync_dir(self.dir)
        return Spec(key, torrent_file=kept)


def _check_torrent(c: Component, path: Path, shown: str) -> str:
    try:
        return lt.read_meta(path).key
    except ValueError as e:
        raise PermanentError(f"components.{c.name}.torrent: {shown} is not a usable .torrent ({e}); "
                             "fix the path or URL") from e


def _shared_session(settings: TorrentSettings, *, resume_interval: float, stats_interval: float
                    ) -> lt.Session:
    global _shared
    with _shared_lock:
        if _shared is None or _shared.closed:
            _shared = lt.Session(settings, resume_interval=resume_interval,
                                          stats_interval=stats_interval)
        else:
            _shared.apply(settings)
        return _shared


def make_source(manifest: Manifest) -> TorrentFetcher:
    """The executor's entry point (sources.registry): `.torrent` URLs come through the HTTP source."""

    def fetch_url(url: str, dest: Path) -> Path:
        # Imported when a .torrent URL is fetched: httpx is ~45 ms of a cold start otherwise.
        from datasetd.sources.http.fetcher import fetch_url_to

        return fetch_url_to(url, dest, max_bytes=MAX_TORRENT_FILE)

    return TorrentFetcher(manifest.torrent, manifest.state_dir, fetch_url=fetch_url)
