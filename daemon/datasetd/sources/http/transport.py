"""The httpx transport of the HTTP source: one request per connection over the standard library's http.client.

Why not httpx's own (httpcore + h11): h11 parses the body in pure Python and
copies every 64 KiB read three times; on 2 cores it tops out at ~0.5 GB/s,
while http.client hands on what each recv brings (measured on loopback from
nginx, 1 GiB: h11 2.2 s, http.client 0.5-0.9 s, curl to /dev/null 1.1 s). httpx stays the API (redirects, auth
headers, URLs, env proxies, which httpx mounts on its own transports); this
module only moves bytes. Errors come out as httpx's exceptions, so the
source's one error table (util.transport_error) reads them all.

Each socket is handed to the request's `trace` extension as it connects, like
httpcore does, so that a supervisor can cut a blocked read (stream.Conn).
"""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
from collections.abc import Iterator
from typing import Any

import httpx

READ_SIZE = 1 << 20  # bytes per read of the body: fewer, larger chunks for the writer and the hasher


class _Socket:
    """What httpcore's trace events carry as return_value: something with get_extra_info('socket')."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def get_extra_info(self, name: str) -> Any:
        return self._sock if name == "socket" else None


class _Body(httpx.SyncByteStream):
    def __init__(self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse,
                 request: httpx.Request) -> None:
        self._conn, self._resp, self._request = conn, resp, request
        length = resp.getheader("content-length")
        chunked = "chunked" in (resp.getheader("transfer-encoding") or "").lower()
        has_body = request.method != "HEAD" and resp.status not in (204, 304)
        self._expected = int(length) if length and length.isdigit() and has_body and not chunked else None
        self._got = 0

    def __iter__(self) -> Iterator[bytes]:
        while True:
            try:
                # read1: one recv at most, so bytes that came before a reset are handed on, not lost.
                chunk = self._resp.read1(READ_SIZE)
            except (TimeoutError, http.client.HTTPException, OSError) as e:
                raise _httpx_error(e, self._request, reading=True) from e
            if not chunk:
                break
            self._got += len(chunk)
            yield chunk
        if self._expected is not None and self._got < self._expected:  # as h11 says it
            raise httpx.RemoteProtocolError(
                f"peer closed connection without sending complete message body: received {self._got} bytes, "
                f"expected {self._expected}", request=self._request)

    def close(self) -> None:
        self._resp.close()
        self._conn.close()


class StdlibTransport(httpx.BaseTransport):
    """One connection per request (no keep-alive: every socket is the cuttable one of its request)."""

    def __init__(self, *, connect_timeout: float, read_timeout: float) -> None:
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._tls: ssl.SSLContext | None = None  # made at the first https request (below)
        self._tls_lock = threading.Lock()

    def _tls_context(self) -> ssl.SSLContext:
        # Loading the system's CA store costs 20-30 ms from a cold cache: only an https URL pays it.
        with self._tls_lock:
            if self._tls is None:
                self._tls = ssl.create_default_context()
            return self._tls

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        port = url.port or (443 if url.scheme == "https" else 80)
        conn: http.client.HTTPConnection
        if url.scheme == "https":
            conn = http.client.HTTPSConnection(url.host, port, timeout=self._connect_timeout,
                                               context=self._tls_context())
        else:
            conn = http.client.HTTPConnection(url.host, port, timeout=self._connect_timeout)
        try:
            return self._send(conn, request)
        except BaseException:
            conn.close()
            raise

    def _send(self, conn: http.client.HTTPConnection, request: httpx.Request) -> httpx.Response:
        try:
            conn.connect()
        except (TimeoutError, OSError) as e:
            raise _httpx_error(e, request, reading=False) from e
        assert conn.sock is not None
        conn.sock.settimeout(self._read_timeout)
        trace = request.extensions.get("trace")
        if trace is not None:
            trace("connection.connect_tcp.complete", {"return_value": _Socket(conn.sock)})
        target = url_target(request.url)
        try:
            conn.putrequest(request.method, target, skip_host=True, skip_accept_encoding=True)
            for name, value in request.headers.multi_items():
                conn.putheader(name, value)
            conn.endheaders(request.read() or None)
            resp = conn.getresponse()
        except (TimeoutError, http.client.HTTPException, OSError) as e:
            raise _httpx_error(e, request, reading=True) from e
        headers = [(k, v) for k, v in resp.getheaders()]
        body = _Body(conn, resp, request)
        return httpx.Response(resp.status, headers=headers, stream=body,
                              extensions={"http_version": b"HTTP/1.1", "reason_phrase": resp.reason.encode()})


def url_target(url: httpx.URL) -> str:
    return url.raw_path.decode("ascii")


def _httpx_error(e: BaseException, request: httpx.Request, *, reading: bool) -> httpx.RequestError:
    """The standard library's failure as the httpx exception httpx's own transport would raise."""
    if isinstance(e, TimeoutError):
        kind: type[httpx.RequestError] = httpx.ReadTimeout if reading else httpx.ConnectTimeout
    elif isinstance(e, http.client.HTTPException):
        kind = httpx.RemoteProtocolError
    else:
        kind = httpx.ReadError if reading else httpx.ConnectError
    return kind(f"{type(e).__name__}: {e}", request=request)
