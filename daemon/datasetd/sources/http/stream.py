"""One connection of a download: GET one segment's missing bytes into the part file.

A response is used only when it is exactly what was asked: a 206 whose
Content-Range starts at our offset and ends where we asked, or a 200 that
restarts the file from zero. Anything else is an interruption, never data.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import httpx

from datasetd import logs
from datasetd.errors import Aborted, PermanentError, Restart, Retryable, SizeConflict
from datasetd.sources.http.part import PartFile, PartState, Segment
from datasetd.sources.http.prefixhash import PrefixHasher
from datasetd.sources.http.util import Scrubber, parse_content_range, status_error, transport_error

log = logs.get()


class Conn:
    """Lets the supervisor cut one request from another thread, promptly.

    Closing a socket does not wake a thread blocked in recv() on it, but
    shutdown() does; httpcore's trace hook hands us each socket as it connects.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self.reason: str | None = None
        self.last_byte = time.monotonic()
        self.finished = False

    def trace(self, event: str, info: dict[str, Any]) -> None:
        if not event.endswith(("connect_tcp.complete", "start_tls.complete")):
            return
        stream = info.get("return_value")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if not isinstance(sock, socket.socket):
            return
        with self._lock:
            # One Conn serves its worker's requests one after another: forget the closed sockets.
            self._socks = [s for s in self._socks if s.fileno() != -1]
            self._socks.append(sock)
            if self.reason is not None:
                _shutdown(sock)

    def abort(self, reason: str) -> None:
        with self._lock:
            if self.reason is None:
                self.reason = reason
            for sock in self._socks:
                _shutdown(sock)


def _shutdown(sock: socket.socket) -> None:
    try:
        # The plain socket method, also for an SSLSocket: its own shutdown() would
        # drop the TLS object under the reading thread instead of just waking it.
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass  # already closed or detached (wrapped by TLS): nothing left to wake


class Job:
    """What the connections of one attempt share with their supervisor."""

    def __init__(self, *, client: httpx.Client, url: str, url_r: str, headers: dict[str, str],
                 part: PartFile, state: PartState, what: str, cred_hint: str, scrub: Scrubber,
                 if_range: str | None, compare: bool, pinned_size: int | None,
                 max_bytes: int | None, hasher: PrefixHasher, connections: int = 1,
                 logger: Any = None) -> None:
        self.client, self.url, self.url_r, self.headers = client, url, url_r, headers
        self.part, self.state, self.what, self.cred_hint, self.scrub = part, state, what, cred_hint, scrub
        self.if_range, self.compare = if_range, compare
        self.pinned_size, self.max_bytes = pinned_size, max_bytes
        self.hasher = hasher
        self.connections = max(1, connections)
        self.lock = threading.Lock()  # guards state's counters and validators, and the queue below
        # Unfinished segments, lowest first: each connection takes the next when its own is done,
        # so the written prefix (what the hasher can take) grows behind all of them together.
        self.waiting = [seg for seg in state.segments if not seg.complete]
        self.log = logger if logger is not None else log

    def next_segment(self) -> Segment | None:
        with self.lock:
            return self.waiting.pop(0) if self.waiting else None

    def persist(self) -> None:
        def snapshot() -> str:
            with self.lock:
                return self.state.to_json()
        self.part.persist(snapshot)

    def restart_single(self, seg: Segment, reason: str, resp: httpx.Response, length: int | None) -> None:
        """A 200 answered our Range: keep its body, written from zero over the old bytes."""
        with self.part.lock:
            with self.lock:
                _take_validators(self, resp)
                self.state.size = self.pinned_size if length is None else length
                seg.end, seg.done = self.state.size, 0
            self.part.reset_locked(self.state)
        self.hasher.follow(self.state.prefix)
        self.log.info("download.restarted", url=self.url_r, reason=reason)


def _take_validators(job: Job, resp: httpx.Response) -> None:
    job.state.etag = resp.headers.get("etag")
    job.state.last_modified = resp.headers.get("last-modified")
    job.state.url = job.url_r


def _changed(state: PartState, resp: httpx.Response) -> bool:
    etag: str | None = resp.headers.get("etag")
    modified: str | None = resp.headers.get("last-modified")
    if state.etag and etag:
        return state.etag != etag
    if state.last_modified and modified:
        return state.last_modified != modified
    return False


def _content_length(resp: httpx.Response) -> int | None:
    value = resp.headers.get("content-length")
    return int(value) if value is not None and value.strip().isdigit() else None


def run_segment(job: Job, seg: Segment, conn: Conn) -> None:
    """Fetch `seg`'s missing bytes; raise Retryable/Restart/Refused/Aborted/SizeConflict otherwise."""
    try:
        _stream(job, seg, conn)
    except httpx.HTTPError as e:
        raise transport_error(e, "GET", job.url_r, job.scrub, conn.reason) from None
    if conn.reason is not None:
        raise Aborted(conn.reason)


def _stream(job: Job, seg: Segment, conn: Conn) -> None:
    ranged = seg.offset > 0 or job.state.segmented
    headers = {**job.headers, "Accept-Encoding": "identity"}
    if ranged:
        headers["Range"] = f"bytes={seg.offset}-{'' if seg.end is None else seg.end - 1}"
        if job.if_range:
            headers["If-Range"] = job.if_range
    with job.client.stream("GET", job.url, headers=headers, extensions={"trace": conn.trace}) as resp:
        if resp.status_code == 416 and ranged:  # our offset is past the server's end: the file changed
            raise Restart(f"GET {job.url_r} answered 416 to bytes={seg.offset}-")
        err = status_error(resp.status_code, resp.reason_phrase, "GET", job.url_r, job.what,
                           job.cred_hint, resp.headers.get("retry-after"))
        if err is not None:
            raise err
        if resp.status_code == 200:
            _accept_full(job, seg, resp, ranged)
        else:
            _accept_partial(job, seg, resp, ranged)
        _copy(job, seg, resp, conn)


def _accept_full(job: Job, seg: Segment, resp: httpx.Response, ranged: bool) -> None:
    length = _content_length(resp)
    if job.pinned_size is not None and length is not None and length != job.pinned_size:
        raise SizeConflict(job.pinned_size, length)
    if job.max_bytes is not None and length is not None and length > job.max_bytes:
        raise PermanentError(f"{job.what}: {job.url_r} is {length} bytes, more than the "
                             f"{job.max_bytes} allowed; check the URL")
    changed = _changed(job.state, resp)
    if job.state.segmented:
        raise Restart("validator changed" if changed else "server ignored Range", single=not changed)
    if ranged:
        job.restart_single(seg, "validator changed" if changed else "server answered 200 to a Range request",
                           resp, length)
        return
    with job.lock:
        _take_validators(job, resp)
        if length is not None:
            job.state.size = seg.end = length


def _accept_partial(job: Job, seg: Segment, resp: httpx.Response, ranged: bool) -> None:
    if not ranged:
        raise Retryable(f"GET {job.url_r} answered 206 to a request without Range")
    got = parse_content_range(resp.headers.get("content-range"))
    asked = f"{seg.offset}-{'' if seg.end is None else seg.end - 1}"
    if got is None:
        raise Retryable(f"GET {job.url_r} answered 206 without a valid Content-Range (asked {asked})")
    start, last, total = got
    wrong_end = (seg.end is not None and last != seg.end - 1) or (
        seg.end is None and total is not None and last != total - 1)
    if start != seg.offset or wrong_end:
        raise Retryable(f"GET {job.url_r} sent bytes {start}-{last}, asked {asked}")
    if total is not None and job.state.size is not None and total != job.state.size:
        if job.pinned_size is not None:
            raise SizeConflict(job.pinned_size, total)
        raise Restart(f"size changed from {job.state.size} to {total}")
    length = _content_length(resp)
    if length is not None and length != last - start + 1:
        raise Retryable(f"GET {job.url_r}: Content-Length {length} disagrees with Content-Range {start}-{last}")
    if job.compare and _changed(job.state, resp):
        raise Restart("validator changed")
    if seg.end is None and total is not None:
        with job.lock:
            job.state.size = seg.end = total


def _copy(job: Job, seg: Segment, resp: httpx.Response, conn: Conn) -> None:
    for chunk in resp.iter_raw():
        if conn.reason is not None:
            return
        end = seg.offset + len(chunk)
        if seg.end is not None and end > seg.end:
            raise Retryable(f"GET {job.url_r} sent more bytes than asked (past offset {seg.end})")
        if job.max_bytes is not None and end > job.max_bytes:
            raise PermanentError(f"{job.what}: {job.url_r} sent more than {job.max_bytes} bytes; check the URL")
        job.part.write_at(chunk, seg.offset)
        job.hasher.feed(seg.offset, chunk)  # before it is counted: the prefix never runs ahead of it
        with job.lock:
            seg.done += len(chunk)
        conn.last_byte = time.monotonic()
    if conn.reason is not None:
        return
    if seg.end is None:  # length unknown until the server closed the body: that was all of it
        with job.lock:
            job.state.size = seg.end = seg.offset
    elif seg.offset < seg.end:
        raise Retryable(f"GET {job.url_r}: short body, stopped at byte {seg.offset} of {seg.end}")
