"""Real BitTorrent parts for tests and the demo: .torrent files, a seeder, a tracker, a fetcher process.

    info_hash = make_torrent(data_file, tmp / "x.torrent")             # v1, 256 KiB pieces
    with Seeder(tmp / "x.torrent", data_file.parent, ip="127.0.0.1", upload_limit=5_000_000) as s:
        s.address                                                     # "127.0.0.1:<port>"
        s.uploaded()                                                  # payload bytes sent so far

Every session here listens on one loopback address with DHT, LSD, UPnP,
NAT-PMP and uTP off, so nothing leaves 127.0.0.0/8. Run as a script
(`python tests/torrent_helpers.py fetch '<json>'`) it is a fetcher process
printing its log events as JSON lines (for the SIGKILL and lab tests), or
(`python tests/torrent_helpers.py seed FILE IP:PORT [LIMIT]`) a seeder.
"""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from datasetd.config.manifest import Component, TorrentSettings, TorrentSource
from datasetd.sources.torrent.lt import Lease, Session, make_torrent, read_meta
from datasetd.sources.torrent.types import AddRequest

__all__ = ["Seeder", "Tracker", "fetcher_process", "free_port", "loopback_settings", "make_torrent",
           "torrent_component"]


def free_port(ip: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((ip, 0))
        return int(s.getsockname()[1])


def loopback_settings(ip: str, port: int | None = None, **kw: Any) -> TorrentSettings:
    """Settings for a session on one loopback address, with every discovery that could leave it off."""
    base: dict[str, Any] = {"listen_interfaces": f"{ip}:{port or free_port(ip)}", "dht": False, "lsd": False,
                            "upnp": False, "natpmp": False, "utp": False}
    return TorrentSettings(**{**base, **kw})


def torrent_component(name: str, torrent: str, file: str, save_path: Path, *, size: int | None = None,
                      sha256: str | None = None, md5: str | None = None, web_seeds: tuple[str, ...] = (),
                      mirrors: tuple[str, ...] = ()) -> Component:
    src = TorrentSource(torrent=torrent, file=file, save_path=save_path, web_seeds=web_seeds, mirrors=mirrors)
    return Component(name=name, source=src, unpack="none", into=None, size=size, sha256=sha256, md5=md5)


class Seeder:
    """A seeding session for one torrent whose data already sits under `data_dir`."""

    def __init__(self, torrent: Path, data_dir: Path, *, ip: str = "127.0.0.1", port: int | None = None,
                 upload_limit: int = 0, trackers: tuple[str, ...] = ()) -> None:
        self.port = port or free_port(ip)
        self.address = f"{ip}:{self.port}"
        self.session = Session(loopback_settings(ip, self.port, trackers=trackers), stats_interval=1.0)
        key = read_meta(torrent).key
        req = AddRequest(key=key, save_path=data_dir, resume_path=None, torrent_file=torrent,
                         trackers=trackers, upload_limit=upload_limit)
        self.lease: Lease = self.session.add(req)[0]
        self.key = key

    def wait_ready(self, timeout: float = 30.0) -> Seeder:
        """Until the data is checked and the torrent seeds (a seeder with bad data never is)."""
        deadline = time.monotonic() + timeout
        while self.lease.status().state != "seeding":
            if time.monotonic() > deadline:
                raise AssertionError(f"seeder not seeding after {timeout}s: {self.lease.status()}")
            time.sleep(0.05)
        return self

    def uploaded(self) -> int:
        return self.lease.status().uploaded

    def close(self) -> None:
        self.session.close(timeout=2.0)

    def __enter__(self) -> Seeder:
        return self.wait_ready()

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class Tracker:
    """A minimal HTTP tracker (BEP 3/23, IPv4 compact) on 127.0.0.1: every announcer learns the others."""

    fail: str | None = None  # answer every announce with this failure reason
    peers: dict[bytes, dict[tuple[str, int], float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        tracker = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                body = tracker.announce(self.client_address[0], self.path)
                try:
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # a client that stopped waiting (e.g. a 'stopped' announce at exit)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/announce"

    def announce(self, ip: str, path: str) -> bytes:
        if self.fail is not None:
            return b"d14:failure reason%d:%se" % (len(self.fail), self.fail.encode())
        q = parse_qs(urlsplit(path).query, encoding="latin-1")
        ih = q["info_hash"][0].encode("latin-1")
        me = (q.get("ip", [ip])[0], int(q["port"][0]))
        swarm = self.peers.setdefault(ih, {})
        if q.get("event", [""])[0] == "stopped":
            swarm.pop(me, None)
        else:
            swarm[me] = time.monotonic()
        others = b"".join(socket.inet_aton(p[0]) + struct.pack(">H", p[1]) for p in swarm if p != me)
        return b"d8:intervali2e12:min intervali1e5:peers%d:%se" % (len(others), others)

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


# -- a fetcher in its own process ---------------------------------------------------------------------


def fetcher_process(config: dict[str, Any]) -> subprocess.Popen[str]:
    """Start `python torrent_helpers.py fetch CONFIG`: JSON log lines on stdout; close stdin to end it."""
    # stderr joins stdout: one reader drains both, so a chatty stderr can never fill its pipe and block.
    return subprocess.Popen([sys.executable, __file__, "fetch", json.dumps(config)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


class EventReader:
    """Reads a fetcher process's JSON lines in a thread so waits can time out."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.events: list[dict[str, Any]] = []
        self.other: list[str] = []  # lines that are not JSON events (tracebacks, warnings)
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                ev = json.loads(line)
            except ValueError:
                ev = None
            if not isinstance(ev, dict):
                self.other.append(line)
                continue
            with self._cond:
                self.events.append(ev)
                self._cond.notify_all()
        with self._cond:
            self.events.append({"event": "process.exited"})
            self._cond.notify_all()

    def wait_for(self, pred: Any, timeout: float, what: str) -> dict[str, Any]:
        with self._cond:
            found = self._cond.wait_for(lambda: next((e for e in self.events if pred(e)), None), timeout)
        if not found:
            err = "".join(self.other)[-2000:]
            raise AssertionError(f"no {what} within {timeout}s; events: {self.names()[-15:]} {err}")
        return found  # type: ignore[no-any-return]

    def names(self) -> list[str]:
        with self._cond:
            return [str(e.get("event")) for e in self.events]

    def of(self, name: str) -> list[dict[str, Any]]:
        with self._cond:
            return [e for e in self.events if e.get("event") == name]


def _run_fetch(config: dict[str, Any]) -> int:
    import structlog

    from datasetd.sources.torrent.fetcher import TorrentFetcher

    structlog.configure(processors=[structlog.processors.add_log_level, structlog.processors.TimeStamper(),
                                    structlog.processors.JSONRenderer()],
                        logger_factory=structlog.PrintLoggerFactory(sys.stdout))
    log = structlog.get_logger("datasetd")
    s = config["settings"]
    settings = loopback_settings(s.pop("ip"), s.pop("port"), **{k: tuple(v) if isinstance(v, list) else v
                                                                 for k, v in s.items()})
    c = config["component"]
    comp = torrent_component(c["name"], c["torrent"], c["file"], Path(c["save_path"]), size=c.get("size"),
                             sha256=c.get("sha256"), web_seeds=tuple(c.get("web_seeds", ())))
    fetcher = TorrentFetcher(settings, Path(config["state_dir"]), **config.get("tuning", {}))
    stop = threading.Event()

    def progress(p: Any) -> None:
        log.info("fetch.progress", done=p.bytes_done, total=p.bytes_total, **dict(p.detail))

    try:
        got = fetcher.fetch(comp, progress, stop)
        log.info("fetch.result", sha256=got.sha256, size=got.size)
        if config.get("linger"):
            sys.stdin.read()  # seeds on until the test closes our stdin
    finally:
        fetcher.close()
    return 0


def _seed(file: Path, address: str, limit: int) -> None:
    torrent = file.with_name(file.name + ".torrent")
    make_torrent(file, torrent)
    ip, port = address.rsplit(":", 1)
    with Seeder(torrent, file.parent, ip=ip, port=int(port), upload_limit=limit) as s:
        print(f"seeding {file} as {s.key} on {s.address}; torrent {torrent}", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    if sys.argv[1] == "fetch":
        sys.exit(_run_fetch(json.loads(sys.argv[2])))
    if sys.argv[1] == "seed":
        _seed(Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]) if len(sys.argv) > 4 else 0)
