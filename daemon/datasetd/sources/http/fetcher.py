"""HTTP(S) source: resumable, segmented, verified downloads with httpx.

Bytes land in `<file>.part`; `<file>.part.json` says which of them are
durable and which server validators (ETag / Last-Modified) they belong to
(see part.py). A download resumes with Range + If-Range; a changed
validator or a 200 to a Range request starts over from zero. Large files
come in parallel segments into one preallocated part file, while one thread
hashes the written prefix (prefixhash.py): no pass over the file afterwards.
Only after the size and every pinned digest match does the part become
`file` (atomic rename). Retries, mirror failover and backoff live here
(_Download); one attempt's connections in attempt.py; one connection in stream.py.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
import structlog

from datasetd import logs
from datasetd.archive.digest import hash_file, mismatch
from datasetd.config.manifest import Component, HttpAuth, HttpSource, Manifest
from datasetd.errors import DigestMismatch, Refused, Restart, Retryable, SizeConflict, TemporaryError
from datasetd.sources.base import Fetched, FetchProgress, ProgressFn
from datasetd.sources.http.attempt import STOPPED, call_cuttable, run_attempt
from datasetd.sources.http.part import PartFile, PartState, Segment, disk_error, split
from datasetd.sources.http.prefixhash import PrefixHasher
from datasetd.sources.http.stream import Conn, Job
from datasetd.sources.http.transport import StdlibTransport
from datasetd.sources.http.util import (
    Scrubber,
    backoff,
    credentials,
    redact_url,
    status_error,
    strong_etag,
    transport_error,
    url_secrets,
)
from datasetd.state.durable import fsync_dir

log = logs.get()

MIN_SEGMENT = 256 * 1024  # below this, another connection costs more than it brings
PROGRESS_EVERY = 0.25
MAX_CONNECT_WAIT = 10.0  # a TCP connect cannot be cut from outside: bounds stop latency while connecting


@dataclass(frozen=True)
class _Pins:
    size: int | None
    sha256: str | None
    md5: str | None
    max_bytes: int | None = None

    @property
    def digest(self) -> bool:
        return bool(self.sha256 or self.md5)


class HttpFetcher:
    """The `Source` for `source = "http"` components (see datasetd.sources.base for the contract)."""

    def __init__(self, *, env: Mapping[str, str] | None = None, retry_base: float = 1.0,
                 retry_max: float = 60.0, max_attempts: int = 8) -> None:
        self.env = env
        self.retry_base = retry_base
        self.retry_max = retry_max
        self.max_attempts = max(1, max_attempts)

    def fetch(self, component: Component, progress: ProgressFn, stop: threading.Event) -> Fetched:
        src = component.source
        if not isinstance(src, HttpSource):
            raise TypeError(f"HttpFetcher cannot fetch a {type(src).__name__}")
        pins = _Pins(component.size, component.sha256, component.md5)
        return _existing(component, src.file, stop) or _Download(
            self, component.name, src, pins, progress, stop).run()


def _existing(component: Component, file: Path, stop: threading.Event) -> Fetched | None:
    """A final file is only ever renamed into place after its check, but the journal that
    recorded it may be gone: hash it again instead of downloading it again."""
    if not file.is_file():
        return None
    d = hash_file(file, md5=component.md5 is not None, stop=stop)
    if mismatch(component, d) is not None:
        log.warning("download.restarted", component=component.name, file=str(file),
                    reason="the file on disk does not match its pins")
        file.unlink()  # ours (a download), and wrong: keeping it would block the fresh copy
        return None
    return Fetched(file, d.size, d.sha256, d.md5)


def fetch_url_to(url: str, dest: Path, *, max_bytes: int, env: Mapping[str, str] | None = None,
                 auth: HttpAuth | None = None, stall_timeout: float = 60.0, retry_base: float = 1.0,
                 retry_max: float = 60.0, max_attempts: int = 4,
                 stop: threading.Event | None = None) -> Path:
    """Download a small file (e.g. a .torrent) to `dest`, refusing more than `max_bytes`; return `dest`.

    Same machinery as HttpFetcher (retries, resume, atomic rename), one connection,
    verified only by the size cap. Raises PermanentError / TemporaryError.
    """
    src = HttpSource(url=url, file=dest, auth=auth, connections=1, stall_timeout=stall_timeout)
    opts = HttpFetcher(env=env, retry_base=retry_base, retry_max=retry_max, max_attempts=max_attempts)
    pins = _Pins(None, None, None, max_bytes=max_bytes)
    # Events name the component the file is for (bound by the caller, e.g. the torrent source
    # fetching a .torrent), not the temporary file.
    component = structlog.contextvars.get_contextvars().get("component") or dest.name
    _Download(opts, str(component), src, pins, lambda _p: None, stop or threading.Event()).run()
    return dest


def _transport(timeout: httpx.Timeout) -> httpx.BaseTransport | None:
    """http.client under httpx (see transport.py); httpx's own when a proxy is set in the
    environment, which httpx honours only with its own transports."""
    if any(k in urllib.request.getproxies() for k in ("http", "https", "all")):
        return None
    return StdlibTransport(connect_timeout=timeout.connect or MAX_CONNECT_WAIT, read_timeout=timeout.read or 60.0)


class _Meter:
    """Throttles progress reports to PROGRESS_EVERY and smooths the rate."""

    def __init__(self, progress: ProgressFn) -> None:
        self.progress = progress
        self.rate = 0.0
        self._last_t = 0.0
        self._last_done = 0

    def report(self, done: int, total: int | None, url_r: str, connections: int, force: bool = False) -> None:
        now = time.monotonic()
        dt = now - self._last_t
        if not force and dt < PROGRESS_EVERY:
            return
        if self._last_t and 0 < dt < 10 and done >= self._last_done:
            inst = (done - self._last_done) / dt
            self.rate = inst if self.rate == 0 else 0.7 * self.rate + 0.3 * inst
        self._last_t, self._last_done = now, done
        self.progress(FetchProgress(done, total, self.rate, {"url": url_r, "connections": connections}))


class _Download:
    """One fetch() call: the loop of attempts over the URL and its mirrors."""

    def __init__(self, opts: HttpFetcher, name: str, src: HttpSource, pins: _Pins,
                 progress: ProgressFn, stop: threading.Event) -> None:
        self.opts, self.src, self.pins, self.stop = opts, src, pins, stop
        self.what = str(src.file)
        self.urls = [src.url, *src.mirrors]
        self.idx = 0
        self.bad: set[int] = set()
        self.creds = credentials(src.auth, os.environ if opts.env is None else opts.env, self.what)
        self.scrub = Scrubber([*self.creds.secrets, *(s for u in self.urls for s in url_secrets(u))])
        self.failures = 0
        self.high = 0  # most bytes ever held: failures count only while this does not grow
        self.mismatched = False
        self.single_only = pins.max_bytes is not None
        self.meter = _Meter(progress)
        self.log = log.bind(component=name, file=self.what)
        # The supervisor cuts a connection after stall_timeout without bytes; httpx's own
        # read timeout is the backstop in case the supervisor itself is starved.
        timeout = httpx.Timeout(src.stall_timeout * 1.5 + 1.0, connect=min(src.stall_timeout, MAX_CONNECT_WAIT))
        # No keep-alive: every request opens its own connection, which the trace hook
        # hands to Conn so that a stop or a stall can cut it (see _http_stream.Conn).
        limits = httpx.Limits(max_keepalive_connections=0)
        self.client = httpx.Client(timeout=timeout, limits=limits, follow_redirects=True,
                                   transport=_transport(timeout))

    @property
    def url_r(self) -> str:
        return redact_url(self.urls[self.idx])

    def run(self) -> Fetched:
        try:
            part = PartFile(self.src.file)
        except BaseException:
            self.client.close()
            raise
        try:
            self.hasher = PrefixHasher(part.fd, md5=self.pins.md5 is not None)
        except BaseException:
            part.close()
            self.client.close()
            raise
        try:
            with self.client:
                return self._loop(part)
        finally:
            self.hasher.close()
            part.close()

    def _loop(self, part: PartFile) -> Fetched:
        state = self._resumable(part)
        if state is not None:
            self.hasher.follow(state.prefix)  # hashes what the part holds while the rest arrives
        while True:
            if self.stop.is_set():
                raise TemporaryError(STOPPED, 0)
            try:
                if state is None:
                    state = self._start(part)
                if not state.complete:
                    self._attempt(part, state)
                return self._finish(part, state)
            except Restart as r:
                self.log.info("download.restarted", url=self.url_r, reason=self.scrub(r.reason))
                self.single_only |= r.single
                state = None
                self._count(r.reason)
            except Retryable as e:
                self._retry(e, state)
            except SizeConflict as c:
                state = None
                self._mismatch(part, "size", str(c.expected), str(c.actual))
            except Refused as r:
                self._refused(r)

    def _resumable(self, part: PartFile) -> PartState | None:
        state = part.load()
        if state is None:
            if part.sidecar.exists():
                self.log.info("download.restarted", url=self.url_r, reason="unusable sidecar")
            return None
        stale = (
            (self.pins.size is not None and state.size is not None and state.size != self.pins.size)
            or state.url not in {redact_url(u) for u in self.urls}
            or (state.done and not (state.etag or state.last_modified) and not self.pins.digest)
        )
        if stale:
            self.log.info("download.restarted", url=self.url_r,
                          reason="the manifest changed or the bytes cannot be validated")
            return None
        return state

    def _start(self, part: PartFile) -> PartState:
        size, etag, modified, ranges = self.pins.size, None, None, False
        src = self.src
        if not self.single_only and src.connections > 1 and (size is None or size > src.segment_threshold):
            head = self._head()
            if head is not None:
                if size is not None and head[0] is not None and head[0] != size:
                    raise SizeConflict(size, head[0])
                size = size if size is not None else head[0]
                etag, modified, ranges = head[1], head[2], head[3]
        segmented = ranges and size is not None and size > src.segment_threshold
        segs = split(size, src.connections, MIN_SEGMENT) if segmented and size else [Segment(0, size)]
        state = PartState(url=self.url_r, etag=etag, last_modified=modified, size=size, segments=segs)
        part.reset(state)
        self.hasher.follow(state.prefix)
        self.log.info("download.started", url=self.url_r, size=size, connections=len(segs))
        return state

    def _head(self) -> tuple[int | None, str | None, str | None, bool] | None:
        """Size, ETag, Last-Modified and range support, or None if the server will not say."""
        url = self.urls[self.idx]

        def head(conn: Conn) -> httpx.Response:
            try:
                return self.client.head(url, headers={**self.creds.headers, "Accept-Encoding": "identity"},
                                        extensions={"trace": conn.trace})
            except httpx.HTTPError as e:
                raise transport_error(e, "HEAD", self.url_r, self.scrub, conn.reason) from None

        resp = call_cuttable(head, self.stop, self.src.stall_timeout)
        err = status_error(resp.status_code, resp.reason_phrase, "HEAD", self.url_r, self.what,
                           self.creds.hint, resp.headers.get("retry-after"))
        if isinstance(err, Retryable) or (isinstance(err, Refused) and resp.status_code in (401, 403, 404, 410)):
            raise err
        if err is not None:
            return None  # e.g. 405: HEAD unsupported, GET will tell
        length = resp.headers.get("content-length", "")
        return (int(length) if length.isdigit() else None, resp.headers.get("etag"),
                resp.headers.get("last-modified"), "bytes" in resp.headers.get("accept-ranges", "").lower())

    def _attempt(self, part: PartFile, state: PartState) -> None:
        same = state.url == self.url_r
        validator = strong_etag(state.etag) or state.last_modified
        # At a mirror, the validator is another server's: still offered as If-Range when
        # nothing else guards the bytes; with a pinned digest the final check is the guard.
        if_range = validator if same or not self.pins.digest else None
        if state.done and not validator and not self.pins.digest:
            raise Restart("nothing validates the bytes already held")
        if state.done:
            self.log.info("download.resumed", url=self.url_r, offset=state.done, size=state.size,
                          connections=sum(not s.complete for s in state.segments))
        job = Job(client=self.client, url=self.urls[self.idx], url_r=self.url_r,
                  headers=dict(self.creds.headers), part=part, state=state, what=self.what,
                  cred_hint=self.creds.hint, scrub=self.scrub, if_range=if_range, compare=same,
                  pinned_size=self.pins.size, max_bytes=self.pins.max_bytes, hasher=self.hasher,
                  connections=self.src.connections, logger=self.log)

        def report(connections: int) -> None:
            self.meter.report(state.done, state.size, self.url_r, connections)

        run_attempt(job, self.stop, self.src.stall_timeout, report)

    def _finish(self, part: PartFile, state: PartState) -> Fetched:
        size = state.done
        if self.pins.size is not None and size != self.pins.size:
            self._mismatch(part, "size", str(self.pins.size), str(size))
            raise Restart("size mismatch")
        sha, md5 = self.hasher.digests(size, self.stop)
        for algo, expected, actual in (("sha256", self.pins.sha256, sha), ("md5", self.pins.md5, md5)):
            if expected and expected.lower() != actual:
                self._mismatch(part, algo, expected.lower(), str(actual))
                raise Restart(f"{algo} mismatch")
        try:
            self._install(part)
        except OSError as e:
            raise disk_error(self.src.file, e, 0) from e
        self.meter.report(size, size, self.url_r, 0, force=True)
        self.log.info("download.completed", url=self.url_r, size=size, sha256=sha)
        return Fetched(self.src.file, size, sha, md5)

    def _install(self, part: PartFile) -> None:
        os.fsync(part.fd)  # power loss after the rename must not leave `file` naming unflushed bytes
        os.replace(part.part, self.src.file)  # atomic: `file` is absent or the whole verified archive
        with contextlib.suppress(FileNotFoundError):
            part.sidecar.unlink()
        fsync_dir(self.src.file.parent)  # the rename (and the sidecar's removal) survive power loss

    def _mismatch(self, part: PartFile, algo: str, expected: str, actual: str) -> None:
        """Discard the bytes; the first time start over (at the next mirror), the second time give up."""
        self.log.warning("download.digest_mismatch", url=self.url_r, algo=algo, expected=expected, actual=actual)
        part.discard()
        if self.mismatched:
            raise DigestMismatch(self.what, algo, expected, actual,
                                 f"downloaded twice, last from {self.url_r}; check the URL and the manifest")
        self.mismatched = True
        self._fail_over(f"{algo} mismatch")

    def _refused(self, r: Refused) -> None:
        self.bad.add(self.idx)
        if len(self.bad) >= len(self.urls):
            raise r.error
        self._fail_over(r.error.message)

    def _count(self, reason: str) -> int:
        self.failures += 1
        if self.failures >= self.opts.max_attempts:
            self.log.warning("download.gave_up", url=self.url_r, reason=self.scrub(reason),
                             attempts=self.failures)
            raise TemporaryError(f"{self.what}: {self.scrub(reason)}; gave up after {self.failures} "
                                 "attempts, will try again later", self.opts.retry_max)
        return self.failures

    def _retry(self, e: Retryable, state: PartState | None) -> None:
        held = state.done if state is not None else 0
        if held > self.high:  # progress since the last failure: this is a new run of failures
            self.high, self.failures = held, 0
        n = self._count(e.reason)
        moved = self._fail_over(e.reason)
        if e.delay is not None and not moved:
            delay = min(self.opts.retry_max, e.delay)  # the server said when (Retry-After)
        else:
            delay = backoff(n, self.opts.retry_base, self.opts.retry_max)
        self.log.info("download.retrying", url=self.url_r, attempt=n, delay=round(delay, 3),
                      reason=self.scrub(e.reason))
        if self.stop.wait(delay):
            raise TemporaryError(STOPPED, 0)

    def _fail_over(self, reason: str) -> bool:
        """Move to the next usable URL, round-robin; True if it is another URL."""
        old = self.idx
        for step in range(1, len(self.urls) + 1):
            i = (old + step) % len(self.urls)
            if i not in self.bad:
                self.idx = i
                break
        if self.idx == old:
            return False
        self.log.warning("download.failed_over", url=redact_url(self.urls[old]), to=self.url_r,
                         reason=self.scrub(reason))
        return True


__all__ = ["HttpFetcher", "fetch_url_to"]


def make_source(manifest: Manifest) -> HttpFetcher:
    """The executor's entry point (sources.registry): one fetcher per process."""
    return HttpFetcher()
