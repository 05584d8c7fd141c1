"""The BitTorrent source against real libtorrent seeders over loopback (no DHT/LSD/UPnP/NAT-PMP/uTP)."""

from __future__ import annotations

import hashlib
import os
import random
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import structlog

from datasetd.config.manifest import Component, TorrentSettings
from datasetd.errors import DigestMismatch, TemporaryError
from datasetd.sources.base import FetchProgress
from datasetd.sources.http.fetcher import fetch_url_to
from datasetd.sources.torrent.fetcher import TorrentFetcher
from http_server import FaultServer
from torrent_helpers import Seeder, Tracker, free_port, loopback_settings, make_torrent, torrent_component

MiB = 1024 * 1024


@dataclass
class Payload:
    data: bytes
    file: Path  # the seeder's copy
    torrent: Path
    key: str
    tmp: Path

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def md5(self) -> str:
        return hashlib.md5(self.data, usedforsecurity=False).hexdigest()

    def component(self, torrent: str | None = None, **kw: Any) -> Component:
        pins: dict[str, Any] = {"size": len(self.data), "sha256": self.sha256, **kw}
        return torrent_component("train", torrent or str(self.torrent), self.file.name,
                                 self.tmp / "root" / "downloads", **pins)


@pytest.fixture
def payload(tmp_path: Path) -> Payload:
    seed_dir = tmp_path / "seed"
    seed_dir.mkdir()
    data = random.Random(5).randbytes(6 * MiB + 12345)  # a short last piece too
    f = seed_dir / "train.bin"
    f.write_bytes(data)
    key = make_torrent(f, tmp_path / "train.torrent")
    return Payload(data, f, tmp_path / "train.torrent", key, tmp_path)


@pytest.fixture
def seeder(payload: Payload) -> Iterator[Seeder]:
    with Seeder(payload.torrent, payload.file.parent, ip="127.0.0.1") as s:
        yield s


class Run:
    """One TorrentFetcher plus everything it reported."""

    def __init__(self, payload: Payload, settings: TorrentSettings, **tuning: Any) -> None:
        self.state_dir = payload.tmp / "root" / ".datasetd"
        tuning = {"health_interval": 0.5, "resume_interval": 1.0, **tuning}
        self.fetcher = TorrentFetcher(settings, self.state_dir, **tuning)
        self.progress: list[FetchProgress] = []
        self.stop = threading.Event()

    def fetch(self, component: Component) -> Any:
        return self.fetcher.fetch(component, self.progress.append, self.stop)


@pytest.fixture
def logs() -> Iterator[list[dict[str, Any]]]:
    with structlog.testing.capture_logs() as captured:
        yield captured


def names(logs: list[dict[str, Any]]) -> list[str]:
    return [e["event"] for e in logs]


def leecher(seeder: Seeder | None, **kw: Any) -> TorrentSettings:
    peers = (seeder.address,) if seeder is not None else ()
    return loopback_settings("127.0.0.2", peers=peers, **{"stall_timeout": 30.0, **kw})


def test_download_by_torrent_path_is_verified(payload: Payload, seeder: Seeder,
                                              logs: list[dict[str, Any]]) -> None:
    run = Run(payload, leecher(seeder))
    comp = payload.component(md5=payload.md5)
    try:
        got = run.fetch(comp)
    finally:
        run.fetcher.close()
    assert got.path == comp.archive
    assert (got.size, got.sha256, got.md5) == (len(payload.data), payload.sha256, payload.md5)
    assert comp.archive.read_bytes() == payload.data
    assert (run.state_dir / "torrent" / f"{payload.key}.torrent").is_file()
    assert (run.state_dir / "torrent" / f"{payload.key}.resume").is_file()
    assert {"torrent.added", "torrent.completed", "torrent.resume_saved"} <= set(names(logs))
    detail = run.progress[-1].detail
    assert {"peers", "seeds", "dht_nodes", "pieces", "num_pieces", "health", "hint"} <= set(detail)
    assert any(p.detail.get("pieces") == p.detail.get("num_pieces") == 25 for p in run.progress)


def test_download_by_magnet_gets_metadata_from_static_peer(payload: Payload, seeder: Seeder,
                                                          logs: list[dict[str, Any]]) -> None:
    run = Run(payload, leecher(seeder))
    try:
        got = run.fetch(payload.component(torrent=f"magnet:?xt=urn:btih:{payload.key}"))
    finally:
        run.fetcher.close()
    assert got.sha256 == payload.sha256
    assert "torrent.metadata_received" in names(logs)
    assert (payload.tmp / "root" / "downloads" / "train.bin").read_bytes() == payload.data


def test_bare_info_hash_is_a_magnet(payload: Payload, seeder: Seeder) -> None:
    run = Run(payload, leecher(seeder))
    try:
        assert run.fetch(payload.component(torrent=payload.key.upper())).sha256 == payload.sha256
    finally:
        run.fetcher.close()


def test_corrupt_byte_in_finished_file_is_found_and_repaired(payload: Payload, seeder: Seeder,
                                                             logs: list[dict[str, Any]]) -> None:
    comp = payload.component()
    first = Run(payload, leecher(seeder))
    try:
        first.fetch(comp)
    finally:
        first.fetcher.close()
    with open(comp.archive, "r+b") as f:  # one flipped byte: resume data still says "complete"
        f.seek(3 * MiB + 7)
        byte = f.read(1)
        f.seek(3 * MiB + 7)
        f.write(bytes([byte[0] ^ 0xFF]))
    logs.clear()
    again = Run(payload, leecher(seeder))
    try:
        got = again.fetch(comp)
    finally:
        again.fetcher.close()
    events = names(logs)
    assert events.index("torrent.resumed") < events.index("torrent.digest_mismatch")
    assert events.index("torrent.digest_mismatch") < events.index("torrent.completed")
    assert "torrent.rechecking" in events
    assert got.sha256 == payload.sha256
    assert comp.archive.read_bytes() == payload.data


def test_torrent_that_differs_from_the_pin_fails_after_one_recheck(payload: Payload, seeder: Seeder,
                                                                   logs: list[dict[str, Any]]) -> None:
    run = Run(payload, leecher(seeder))
    try:
        with pytest.raises(DigestMismatch) as err:
            run.fetch(payload.component(sha256="0" * 64))
    finally:
        run.fetcher.close()
    assert err.value.algo == "sha256" and err.value.actual == payload.sha256
    assert names(logs).count("torrent.digest_mismatch") == 2
    assert "torrent.rechecking" in names(logs)


def test_no_seeder_stall_names_zero_peers(payload: Payload, logs: list[dict[str, Any]]) -> None:
    run = Run(payload, leecher(None, stall_timeout=2.0))
    try:
        with pytest.raises(TemporaryError) as err:
            run.fetch(payload.component())
    finally:
        run.fetcher.close()
    assert "stalled" in str(err.value) and "0 peers seen" in str(err.value)
    stalled = [e for e in logs if e["event"] == "torrent.stalled"]
    assert stalled and stalled[0]["health"] == "0 peers seen" and "web_seeds" in stalled[0]["hint"]
    assert any(p.detail.get("health") == "0 peers seen" for p in run.progress)


def test_port_in_use_is_named_in_health(payload: Payload, logs: list[dict[str, Any]]) -> None:
    port = free_port("127.0.0.5")
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.5", port))
        squatter.listen()
        run = Run(payload, loopback_settings("127.0.0.5", port, stall_timeout=2.0))
        try:
            with pytest.raises(TemporaryError) as err:
                run.fetch(payload.component())
        finally:
            run.fetcher.close()
    assert f"cannot listen: 127.0.0.5:{port}" in str(err.value)
    health = [e for e in logs if e["event"] == "torrent.health"]
    assert health and "listen_interfaces" in health[0]["hint"]


def test_web_seed_completes_when_no_peer_has_the_file(payload: Payload,
                                                      logs: list[dict[str, Any]]) -> None:
    with FaultServer(root=payload.file.parent) as http:
        url = http.url("/train.bin")
        run = Run(payload, leecher(None, stall_timeout=1.0))
        try:
            got = run.fetch(payload.component(web_seeds=(url,)))
        finally:
            run.fetcher.close()
        assert http.requests("/train.bin", "GET"), "libtorrent never asked the web seed"
    assert got.sha256 == payload.sha256
    events = names(logs)
    assert events.index("torrent.stalled") < events.index("torrent.fell_back") < events.index(
        "torrent.completed")


def test_stop_returns_promptly_and_saves_resume_data(payload: Payload, logs: list[dict[str, Any]]) -> None:
    with Seeder(payload.torrent, payload.file.parent, ip="127.0.0.1", upload_limit=1 * MiB) as slow:
        run = Run(payload, leecher(slow), resume_interval=60.0)
        comp = payload.component()

        def stop_when_started(p: FetchProgress) -> None:
            run.progress.append(p)
            if p.bytes_done > 0:
                run.stop.set()

        try:
            with pytest.raises(TemporaryError) as err:
                run.fetcher.fetch(comp, stop_when_started, run.stop)
        finally:
            run.fetcher.close()
    assert err.value.delay == 0 and "stopped" in str(err.value)
    saved = [e for e in logs if e["event"] == "torrent.resume_saved"]
    assert saved and 0 < saved[-1]["pieces"] < 25, "stop must save resume data of a partial download"


def test_lost_resume_data_means_a_recheck_not_a_download(payload: Payload,
                                                         logs: list[dict[str, Any]]) -> None:
    comp = payload.component()
    with Seeder(payload.torrent, payload.file.parent, ip="127.0.0.1", upload_limit=2 * MiB) as slow:
        first = Run(payload, leecher(slow))

        def stop_at_a_third(p: FetchProgress) -> None:
            first.progress.append(p)
            if p.bytes_done >= 2 * MiB:
                first.stop.set()

        try:
            with pytest.raises(TemporaryError):
                first.fetcher.fetch(comp, stop_at_a_third, first.stop)
        finally:
            first.fetcher.close()
    kept = first.progress[-1].bytes_done
    (first.state_dir / "torrent" / f"{payload.key}.resume").unlink()  # the crash lost it
    logs.clear()
    again = Run(payload, leecher(None, stall_timeout=2.0))  # no peer: only the disk can give pieces
    try:
        with pytest.raises(TemporaryError, match="stalled"):
            again.fetch(comp)
    finally:
        again.fetcher.close()
    rechecks = [e for e in logs if e["event"] == "torrent.rechecking"]
    assert rechecks and "no usable resume data" in rechecks[0]["reason"]
    assert "torrent.resumed" not in names(logs)
    assert max(p.bytes_done for p in again.progress) >= kept >= 2 * MiB


def test_every_tracker_failing_is_named_with_its_message(payload: Payload) -> None:
    tracker = Tracker(fail="torrent not registered")
    try:
        run = Run(payload, leecher(None, stall_timeout=2.0, trackers=(tracker.url,)))
        try:
            with pytest.raises(TemporaryError) as err:
                run.fetch(payload.component())
        finally:
            run.fetcher.close()
    finally:
        tracker.close()
    assert "every tracker fails" in str(err.value) and "torrent not registered" in str(err.value)


def test_torrent_file_from_a_url_is_fetched_once_and_kept(payload: Payload, seeder: Seeder) -> None:
    calls: list[str] = []

    def fetch_url(url: str, dest: Path) -> Path:
        calls.append(url)
        return fetch_url_to(url, dest, max_bytes=MiB)

    with FaultServer(files={"/t/train.torrent": payload.torrent.read_bytes()}) as http:
        url = http.url("/t/train.torrent")
        run = Run(payload, leecher(seeder))
        run.fetcher.fetch_url = fetch_url
        try:
            assert run.fetch(payload.component(torrent=url)).sha256 == payload.sha256
            assert run.fetch(payload.component(torrent=url)).sha256 == payload.sha256
        finally:
            run.fetcher.close()
    assert calls == [url]
    assert [p.name for p in (run.state_dir / "torrent").glob("url-*.torrent")]


def test_disk_error_is_reported_and_the_download_resumes_once_fixed(
        payload: Payload, seeder: Seeder, logs: list[dict[str, Any]]) -> None:
    comp = payload.component()
    comp.archive.mkdir(parents=True)  # libtorrent cannot open the file: a disk error on first write
    run = Run(payload, leecher(seeder))
    errors: list[FetchProgress] = []

    def progress(p: FetchProgress) -> None:
        run.progress.append(p)
        if str(p.detail.get("health", "")).startswith("disk error") and not errors:
            errors.append(p)
            comp.archive.rmdir()  # the user fixes it

    try:
        got = run.fetcher.fetch(comp, progress, run.stop)
    finally:
        run.fetcher.close()
    assert errors, "the disk error never reached the status"
    assert "save_path" in str(errors[0].detail["hint"])
    assert got.sha256 == payload.sha256
    assert "torrent.disk_retried" in names(logs)


def test_a_torrent_apply_from_a_torrent_file_imports_no_http_client(payload: Payload, seeder: Seeder) -> None:
    """httpx (with ssl) is ~45 ms of a cold start: only a .torrent URL, a web seed or a tracker needs it."""
    listing = payload.tmp / "modules.txt"
    manifest = payload.tmp / "m.toml"
    manifest.write_text(f"""version = 1
root = "{payload.tmp / 'root'}"

[torrent]
listen_interfaces = "127.0.0.2:{free_port('127.0.0.2')}"
dht = false
lsd = false
utp = false
upnp = false
natpmp = false
peers = ["{seeder.address}"]

[components.train]
source = "torrent"
torrent = "{payload.torrent}"
file = "{payload.file.name}"
save_path = "downloads"
size = {len(payload.data)}
sha256 = "{payload.sha256}"
""")
    # `datasetd apply` in a fresh interpreter that writes, as it exits, every module it imported.
    run_cli = ("import atexit, os, runpy, sys\n"
               "atexit.register(lambda: open(os.environ['MODULES_OUT'], 'w').write('\\n'.join(sys.modules)))\n"
               "sys.argv[0] = 'datasetd'\n"
               "runpy.run_module('datasetd', run_name='__main__')\n")
    done = subprocess.run([sys.executable, "-c", run_cli, "--log-format", "json", "apply", str(manifest)],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "MODULES_OUT": str(listing)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert (payload.tmp / "root" / "downloads" / payload.file.name).read_bytes() == payload.data
    imported = {name.split(".")[0] for name in listing.read_text().split()}
    assert {"libtorrent", "datasetd"} <= imported  # the listing is whole
    assert "httpx" not in imported
