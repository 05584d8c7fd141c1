"""A small fault-injecting HTTP/1.1 file server for tests and the demo (stdlib only).

    server = FaultServer(files={"/a.bin": data}).start()     # 127.0.0.1, a free port
    url = server.url("/a.bin")
    server.add_fault("/a.bin", Fault(reset_after=100_000))   # the next GET of /a.bin only
    server.throttle("/a.bin", 200_000)                       # bytes per second, answers in flight too
    ...
    server.requests("/a.bin", "GET")                         # what clients sent, in order
    server.stop()

Serves files from an in-memory dict and/or a directory, with single-range
Range requests, ETag, Last-Modified and If-Range, optional bearer or basic
auth, and per-path faults (see Fault) consumed in the order they were added.
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import hashlib
import re
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")
_CHUNK = 16 * 1024


@dataclass
class Fault:
    """What to do wrong for one request (fields combine; unset fields behave normally)."""

    status: int | None = None  # answer this status with a short text body instead of the file
    retry_after: str | None = None  # Retry-After header sent with `status`
    ignore_range: bool = False  # answer 200 with the whole file even to a Range request
    range_shift: int = 0  # answer 206 starting this many bytes after the asked start (wrong range)
    send_only: int | None = None  # send this many body bytes (Content-Length says all), then close
    reset_after: int | None = None  # send this many body bytes, then reset the connection (RST)
    stall_after: int | None = None  # send this many body bytes, then send nothing more
    stall_for: float = 30.0  # how long a stall holds the connection (the server's stop ends it)
    corrupt_at: int | None = None  # flip the byte at this file offset in what is sent
    replace_with: bytes | None = None  # before answering, replace the file's content (new ETag)
    methods: tuple[str, ...] = ("GET",)  # the request methods this fault applies to


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    started: float  # time.monotonic() when the request line was read
    ended: float | None = None
    status: int | None = None
    sent: int = 0  # body bytes sent

    @property
    def range_start(self) -> int | None:
        m = _RANGE_RE.match(self.headers.get("range", ""))
        return int(m.group(1)) if m and m.group(1) else None


@dataclass
class _Body:
    size: int
    etag: str
    modified: str
    read: Callable[[int, int], bytes]  # (offset, length) -> bytes


@dataclass
class _Queued:
    fault: Fault
    left: int | None  # None: forever


@dataclass
class _PathState:
    faults: list[_Queued] = field(default_factory=list)
    rate: float | None = None
    active: int = 0
    max_active: int = 0


class FaultServer:
    def __init__(self, files: Mapping[str, bytes] | None = None, root: Path | None = None, *,
                 host: str = "127.0.0.1", port: int = 0, bearer: str | None = None,
                 basic: tuple[str, str] | None = None, accept_ranges: bool = True,
                 tls: ssl.SSLContext | None = None) -> None:
        self.root = root
        self.scheme = "https" if tls is not None else "http"
        self.bearer = bearer
        self.basic = basic
        self.accept_ranges = accept_ranges
        self._lock = threading.Lock()
        self._files: dict[str, tuple[bytes, str, str]] = {}
        self._paths: dict[str, _PathState] = {}
        self._log: list[Request] = []
        self._stopping = threading.Event()
        for path, data in (files or {}).items():
            self.put(path, data)
        self._httpd = _Server((host, port), _Handler)
        self._httpd.owner = self
        if tls is not None:  # HTTPS: each accepted connection does its TLS handshake first
            self._httpd.socket = tls.wrap_socket(self._httpd.socket, server_side=True)
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------
    def start(self) -> FaultServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fault-http-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # releases stalled answers
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FaultServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def url(self, path: str) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"

    # -- content and faults ------------------------------------------------
    def put(self, path: str, data: bytes) -> None:
        """Serve `data` at `path`; replacing content changes its ETag (and Last-Modified)."""
        etag = '"' + hashlib.sha256(data).hexdigest()[:16] + '"'
        with self._lock:
            old = self._files.get(path)
            stamp = time.time() + (1 if old is not None and old[1] != etag else 0)
            self._files[path] = (bytes(data), etag, email.utils.formatdate(stamp, usegmt=True))

    def add_fault(self, path: str, fault: Fault, times: int | None = 1) -> None:
        """Apply `fault` to the next `times` matching requests of `path` (None: every one)."""
        with self._lock:
            self._path(path).faults.append(_Queued(fault, times))

    def clear_faults(self, path: str) -> None:
        with self._lock:
            self._path(path).faults.clear()

    def throttle(self, path: str, bytes_per_second: float | None) -> None:
        with self._lock:
            self._path(path).rate = bytes_per_second

    # -- what happened -------------------------------------------------------
    def requests(self, path: str | None = None, method: str | None = None) -> list[Request]:
        with self._lock:
            return [r for r in self._log if (path is None or r.path == path)
                    and (method is None or r.method == method)]

    def max_concurrent(self, path: str) -> int:
        with self._lock:
            return self._path(path).max_active

    # -- used by the handler ------------------------------------------------
    def _path(self, path: str) -> _PathState:
        return self._paths.setdefault(path, _PathState())

    def _enter(self, method: str, path: str, headers: dict[str, str]) -> tuple[Request, Fault | None]:
        with self._lock:
            rec = Request(method, path, headers, time.monotonic())
            self._log.append(rec)
            st = self._path(path)
            st.active += 1
            st.max_active = max(st.max_active, st.active)
            fault = None
            for q in st.faults:
                if method in q.fault.methods:
                    fault = q.fault
                    if q.left is not None:
                        q.left -= 1
                        if q.left <= 0:
                            st.faults.remove(q)
                    break
            return rec, fault

    def _rate(self, path: str) -> float | None:
        """The throttle now: read before every chunk, so a test can lift it mid-answer."""
        with self._lock:
            return self._path(path).rate

    def _leave(self, rec: Request) -> None:
        with self._lock:
            rec.ended = time.monotonic()
            self._path(rec.path).active -= 1

    def _body(self, path: str) -> _Body | None:
        with self._lock:
            entry = self._files.get(path)
        if entry is not None:
            data, etag, modified = entry
            return _Body(len(data), etag, modified, lambda off, n: data[off:off + n])
        if self.root is None:
            return None
        file = (self.root / unquote(path).lstrip("/")).resolve()
        if not file.is_relative_to(self.root.resolve()) or not file.is_file():
            return None
        st = file.stat()

        def read(off: int, n: int) -> bytes:
            with file.open("rb") as f:
                f.seek(off)
                return f.read(n)

        return _Body(st.st_size, f'"{st.st_mtime_ns:x}-{st.st_size:x}"',
                     email.utils.formatdate(st.st_mtime, usegmt=True), read)

    def _authorized(self, header: str | None) -> bool:
        if self.bearer is None and self.basic is None:
            return True
        if self.bearer is not None and header == f"Bearer {self.bearer}":
            return True
        if self.basic is not None:
            token = base64.b64encode(f"{self.basic[0]}:{self.basic[1]}".encode()).decode()
            return header == f"Basic {token}"
        return False


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: FaultServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean; the request log is in FaultServer.requests()

    def do_GET(self) -> None:
        self._serve(head=False)

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def _serve(self, head: bool) -> None:
        fs = self.server.owner
        path = urlsplit(self.path).path
        headers = {k.lower(): v for k, v in self.headers.items()}
        rec, fault = fs._enter(self.command, path, headers)
        try:
            self._answer(fs, rec, fault, head)
        except OSError:
            self.close_connection = True  # the client went away: fine, it is what clients do
        finally:
            fs._leave(rec)

    def _answer(self, fs: FaultServer, rec: Request, fault: Fault | None, head: bool) -> None:
        if fault is not None and fault.replace_with is not None:
            fs.put(rec.path, fault.replace_with)
        if not fs._authorized(self.headers.get("Authorization")):
            return self._status(rec, 401, head, {"WWW-Authenticate": 'Bearer realm="test"'})
        if fault is not None and fault.status is not None:
            extra = {"Retry-After": fault.retry_after} if fault.retry_after else {}
            return self._status(rec, fault.status, head, extra)
        body = fs._body(rec.path)
        if body is None:
            return self._status(rec, 404, head, {})
        span = self._range(fs, body, fault)
        if span == "unsatisfiable":
            return self._status(rec, 416, head, {"Content-Range": f"bytes */{body.size}"})
        start, end = (0, body.size) if span is None else span
        rec.status = 200 if span is None else 206
        self.send_response(rec.status)
        self.send_header("Content-Length", str(end - start))
        self.send_header("ETag", body.etag)
        self.send_header("Last-Modified", body.modified)
        if fs.accept_ranges:
            self.send_header("Accept-Ranges", "bytes")
        if span is not None:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{body.size}")
        self.end_headers()
        if not head:
            self._send(fs, rec, body, start, end, fault)
        return None

    def _range(self, fs: FaultServer, body: _Body, fault: Fault | None) -> tuple[int, int] | str | None:
        """(start, end) of a satisfiable single range, "unsatisfiable", or None for the whole file."""
        m = _RANGE_RE.match(self.headers.get("Range", "").strip())
        if not m or not fs.accept_ranges or (fault is not None and fault.ignore_range):
            return None
        if_range = self.headers.get("If-Range")
        if if_range is not None and if_range not in (body.etag, body.modified):
            return None  # the client's copy is of another version: send the whole new one
        first, last = m.group(1), m.group(2)
        if not first:  # suffix range: the last N bytes
            start, end = max(0, body.size - int(last or 0)), body.size
        else:
            start = int(first)
            end = min(body.size, int(last) + 1) if last else body.size
        if start >= body.size or start >= end:
            return "unsatisfiable"
        shift = fault.range_shift if fault is not None else 0
        return min(start + shift, end - 1), end

    def _status(self, rec: Request, status: int, head: bool, extra: dict[str, str]) -> None:
        rec.status = status
        text = f"{status} {self.responses.get(status, ('',))[0]}\n".encode()
        self.send_response(status)
        for k, v in extra.items():
            self.send_header(k, v)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(text)))
        self.end_headers()
        if not head:
            self.wfile.write(text)

    def _send(self, fs: FaultServer, rec: Request, body: _Body, start: int, end: int,
              fault: Fault | None) -> None:
        limits = [n for n in (fault.send_only, fault.reset_after, fault.stall_after) if n is not None] \
            if fault is not None else []
        stop_at = min(end, start + min(limits)) if limits else end
        pos = start
        while pos < stop_at:
            rate = fs._rate(rec.path)
            chunk_size = _CHUNK if not rate else max(1024, min(_CHUNK, int(rate / 20)))
            data = bytearray(body.read(pos, min(chunk_size, stop_at - pos)))
            if fault is not None and fault.corrupt_at is not None and pos <= fault.corrupt_at < pos + len(data):
                data[fault.corrupt_at - pos] ^= 0xFF
            self.wfile.write(data)
            pos += len(data)
            rec.sent += len(data)
            if rate:
                time.sleep(len(data) / rate)
        if pos < end and fault is not None:
            self._misbehave(fs, fault)

    def _misbehave(self, fs: FaultServer, fault: Fault) -> None:
        self.close_connection = True
        if fault.stall_after is not None and (fault.reset_after is None or fault.stall_after <= fault.reset_after):
            fs._stopping.wait(fault.stall_for)
            return
        if fault.reset_after is not None:
            # SO_LINGER 0 turns close() into a reset (RST) instead of an orderly FIN;
            # the read file holds a reference to the socket, so it is closed too.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            with contextlib.suppress(OSError):
                self.rfile.close()
                self.connection.close()
        # send_only: returning with close_connection set closes the socket after a short body
