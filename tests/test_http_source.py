"""The HTTP source against a real fault-injecting server on 127.0.0.1 (tests/http_server.py)."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from datasetd.config.manifest import Component, HttpAuth, HttpSource
from datasetd.errors import PermanentError, TemporaryError
from datasetd.sources.base import Fetched, FetchProgress
from datasetd.sources.http.fetcher import HttpFetcher, fetch_url_to
from http_server import Fault, FaultServer

MB = 1_000_000
DATA = os.urandom(2 * MB)
SHA = hashlib.sha256(DATA).hexdigest()
PATH = "/data/train.tar"


@pytest.fixture
def server() -> Iterator[FaultServer]:
    srv = FaultServer({PATH: DATA}).start()
    yield srv
    srv.stop()


def component(root: Path, url: str, *, sha256: str | None = SHA, size: int | None = len(DATA),
              md5: str | None = None, mirrors: tuple[str, ...] = (), auth: HttpAuth | None = None,
              connections: int = 1, threshold: int = 64 * MB, stall: float = 1.0) -> Component:
    src = HttpSource(url=url, file=root / "archives" / "train.tar", mirrors=mirrors, auth=auth,
                     connections=connections, segment_threshold=threshold, stall_timeout=stall)
    return Component(name="train", source=src, unpack="none", into=None, size=size, sha256=sha256, md5=md5)


def fetcher(**kw: Any) -> HttpFetcher:
    kw.setdefault("retry_base", 0.05)
    kw.setdefault("retry_max", 2.0)
    return HttpFetcher(**kw)


def fetch(comp: Component, stop: threading.Event | None = None, **kw: Any) -> tuple[Fetched, list[FetchProgress]]:
    seen: list[FetchProgress] = []
    got = fetcher(**kw).fetch(comp, seen.append, stop or threading.Event())
    return got, seen


def assert_done(got: Fetched, comp: Component, data: bytes = DATA) -> None:
    assert got.path == comp.archive
    assert hashlib.sha256(comp.archive.read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()
    assert got.sha256 == hashlib.sha256(data).hexdigest() and got.size == len(data)
    leftovers = [p.name for p in comp.archive.parent.iterdir() if p != comp.archive]
    assert leftovers == [], f"temporary files left behind: {leftovers}"


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == name]


def gets(srv: FaultServer) -> list[Any]:
    return srv.requests(PATH, "GET")


def test_plain_download_is_verified_and_reports_progress(server: FaultServer, tmp_path: Path) -> None:
    comp = component(tmp_path, server.url(PATH), md5=hashlib.md5(DATA).hexdigest())
    with capture_logs() as logs:
        got, seen = fetch(comp)
    assert_done(got, comp)
    assert got.md5 == hashlib.md5(DATA).hexdigest()
    assert seen[-1].bytes_done == seen[-1].bytes_total == len(DATA)
    assert seen[-1].detail["url"] == server.url(PATH)
    assert [e["event"] for e in logs] == ["download.started", "download.completed"]
    assert len(gets(server)) == 1 and "range" not in gets(server)[0].headers


def test_resume_after_connection_reset_mid_body(server: FaultServer, tmp_path: Path) -> None:
    server.add_fault(PATH, Fault(reset_after=700_000))
    comp = component(tmp_path, server.url(PATH))
    with capture_logs() as logs:
        got, _ = fetch(comp)
    assert_done(got, comp)
    first, second = gets(server)
    assert first.sent == 700_000 and second.range_start is not None and second.range_start > 0
    assert second.headers["if-range"] == first_etag(server)
    assert events(logs, "download.resumed")[0]["offset"] == second.range_start
    assert events(logs, "download.retrying")


def first_etag(srv: FaultServer) -> str:
    import httpx
    return httpx.head(srv.url(PATH)).headers["etag"]


_KILLED_CHILD = textwrap.dedent("""
    import sys, threading
    from pathlib import Path
    from datasetd.config.manifest import Component, HttpSource
    from datasetd.sources.http.fetcher import HttpFetcher
    src = HttpSource(url=sys.argv[1], file=Path(sys.argv[2]), connections=int(sys.argv[3]),
                     segment_threshold=100_000, stall_timeout=30)
    comp = Component(name="train", source=src, unpack="none", into=None)
    HttpFetcher(retry_base=0.05).fetch(comp, lambda p: None, threading.Event())
""")


@pytest.mark.parametrize("connections", [1, 4])
def test_resume_after_sigkill_of_the_downloading_process(server: FaultServer, tmp_path: Path,
                                                         connections: int) -> None:
    comp = component(tmp_path, server.url(PATH), connections=connections, threshold=100_000)
    sidecar = comp.archive.with_name("train.tar.part.json")
    server.throttle(PATH, 400_000 // connections)
    child = subprocess.Popen([sys.executable, "-c", _KILLED_CHILD, server.url(PATH), str(comp.archive),
                              str(connections)])
    try:
        claimed = wait_for_claim(sidecar, child)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    assert child.returncode == -signal.SIGKILL
    assert not comp.archive.exists()
    server.throttle(PATH, None)
    before = len(gets(server))
    got, _ = fetch(comp)
    assert_done(got, comp)
    resumed = [r for r in gets(server)[before:] if r.range_start]
    assert sum(r.sent for r in gets(server)[before:]) <= len(DATA) - claimed  # nothing claimed was fetched again
    assert resumed and all(r.range_start % 500_000 for r in resumed)  # each from where it stopped


def wait_for_claim(sidecar: Path, child: subprocess.Popen[bytes]) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert child.poll() is None, "the child exited before it could be killed"
        try:
            claims = [d for _, _, d in json.loads(sidecar.read_text())["segments"]]
        except (OSError, ValueError):
            claims = []
        if claims and all(d > 0 for d in claims) and sum(claims) < len(DATA):
            return int(sum(claims))
        time.sleep(0.05)
    raise AssertionError(f"{sidecar} never claimed any bytes within 30 s")


def test_server_ignoring_range_restarts_from_zero(server: FaultServer, tmp_path: Path) -> None:
    server.add_fault(PATH, Fault(reset_after=500_000))
    server.add_fault(PATH, Fault(ignore_range=True))
    comp = component(tmp_path, server.url(PATH))
    with capture_logs() as logs:
        got, _ = fetch(comp)
    assert_done(got, comp)
    second = gets(server)[1]
    assert second.range_start and second.status == 200 and second.sent == len(DATA)
    assert "200" in events(logs, "download.restarted")[0]["reason"]


def test_segmented_download_falls_back_when_ranges_are_ignored(server: FaultServer, tmp_path: Path) -> None:
    server.add_fault(PATH, Fault(ignore_range=True), times=None)
    comp = component(tmp_path, server.url(PATH), connections=4, threshold=100_000)
    with capture_logs() as logs:
        got, _ = fetch(comp)
    assert_done(got, comp)
    assert events(logs, "download.restarted")[0]["reason"] == "server ignored Range"
    assert "range" not in gets(server)[-1].headers


@pytest.mark.parametrize("fault", [Fault(range_shift=1000), Fault(send_only=100_000)], ids=["wrong-range", "short"])
def test_bad_206_or_short_body_is_not_used(server: FaultServer, tmp_path: Path, fault: Fault) -> None:
    server.add_fault(PATH, Fault(reset_after=400_000))
    server.add_fault(PATH, fault)
    comp = component(tmp_path, server.url(PATH))
    with capture_logs() as logs:
        got, _ = fetch(comp)
    assert_done(got, comp)
    reqs = gets(server)
    kept = 100_000 if fault.send_only else 0  # a short body's bytes are good; a wrong range's are not
    assert len(reqs) == 3 and reqs[2].range_start == reqs[1].range_start + kept
    reason = events(logs, "download.retrying")[1]["reason"]
    assert ("sent bytes" in reason) if fault.range_shift else ("RemoteProtocolError" in reason)


def test_changed_etag_between_attempts_restarts_cleanly(server: FaultServer, tmp_path: Path) -> None:
    new = os.urandom(len(DATA) + 5000)
    server.add_fault(PATH, Fault(reset_after=600_000))
    server.add_fault(PATH, Fault(replace_with=new))
    comp = component(tmp_path, server.url(PATH), sha256=hashlib.sha256(new).hexdigest(), size=None)
    with capture_logs() as logs:
        got, _ = fetch(comp)
    assert_done(got, comp, new)
    second = gets(server)[1]
    assert second.range_start and second.status == 200  # If-Range carried the old ETag
    assert events(logs, "download.restarted")[0]["reason"] == "validator changed"


def test_stall_is_detected_and_fails_over_to_a_mirror(server: FaultServer, tmp_path: Path) -> None:
    mirror = "/mirror/train.tar"
    server.put(mirror, DATA)
    server.add_fault(PATH, Fault(stall_after=300_000), times=None)
    comp = component(tmp_path, server.url(PATH), mirrors=(server.url(mirror),), stall=1.0)
    with capture_logs() as logs:
        got, _ = fetch(comp)
    assert_done(got, comp)
    over = events(logs, "download.failed_over")
    assert over and over[0]["to"] == server.url(mirror) and "stalled" in over[0]["reason"]
    at_mirror = server.requests(mirror, "GET")
    assert at_mirror[0].range_start is not None and at_mirror[0].range_start > 0  # resumed, not restarted


def test_503_with_retry_after_is_honoured(server: FaultServer, tmp_path: Path) -> None:
    server.add_fault(PATH, Fault(status=503, retry_after="1"))
    comp = component(tmp_path, server.url(PATH))
    with capture_logs() as logs:
        got, _ = fetch(comp, retry_max=5.0)
    assert_done(got, comp)
    first, second = gets(server)
    assert first.status == 503 and first.ended is not None
    assert second.started - first.ended >= 0.9, "the client did not wait for Retry-After"
    assert events(logs, "download.retrying")[0]["delay"] == 1.0


def test_429_and_5xx_are_retried_until_max_attempts(server: FaultServer, tmp_path: Path) -> None:
    server.add_fault(PATH, Fault(status=429))
    server.add_fault(PATH, Fault(status=500), times=None)
    comp = component(tmp_path, server.url(PATH))
    with pytest.raises(TemporaryError) as err:
        fetch(comp, max_attempts=3)
    assert [r.status for r in gets(server)] == [429, 500, 500]
    assert "500" in str(err.value) and str(comp.archive) in str(err.value)


@pytest.mark.parametrize(("status", "hint"), [(404, "check the URL"), (401, "env var DS_TOKEN")])
def test_401_and_404_are_not_retried(tmp_path: Path, status: int, hint: str) -> None:
    with FaultServer({PATH: DATA}, bearer="the-right-token") as srv:
        path = PATH if status == 401 else "/missing.tar"
        comp = component(tmp_path, srv.url(path), auth=HttpAuth(bearer_env="DS_TOKEN"))
        with pytest.raises(PermanentError) as err:
            fetch(comp, env={"DS_TOKEN": "SECRET-TOKEN-123" if status == 401 else "the-right-token"})
        assert len(srv.requests()) == 1
    msg = str(err.value)
    assert hint in msg and str(status) in msg and "\n" not in msg and "SECRET-TOKEN-123" not in msg


def test_corrupt_body_is_rejected_by_digest(server: FaultServer, tmp_path: Path) -> None:
    from datasetd.errors import DigestMismatch
    server.add_fault(PATH, Fault(corrupt_at=123_456), times=None)
    comp = component(tmp_path, server.url(PATH))
    with capture_logs() as logs, pytest.raises(DigestMismatch) as err:
        fetch(comp)
    bad = bytearray(DATA)
    bad[123_456] ^= 0xFF
    assert err.value.expected == SHA and err.value.actual == hashlib.sha256(bad).hexdigest()
    assert SHA in str(err.value) and err.value.actual in str(err.value)
    assert [r.range_start for r in gets(server)] == [None, None]  # retried once, from zero
    assert len(events(logs, "download.digest_mismatch")) == 2
    assert not comp.archive.exists()


def test_segmented_download_equals_single_stream(server: FaultServer, tmp_path: Path) -> None:
    server.throttle(PATH, 2 * MB)  # per connection: several are in flight together
    single = component(tmp_path / "one", server.url(PATH), connections=1)
    got1, _ = fetch(single)
    assert len(gets(server)) == 1
    seg = component(tmp_path / "four", server.url(PATH), connections=4, threshold=100_000)
    got4, seen = fetch(seg)
    assert_done(got4, seg)
    assert single.archive.read_bytes() == seg.archive.read_bytes() and got1.sha256 == got4.sha256
    ranged = gets(server)[1:]
    assert sorted(r.range_start for r in ranged) == [0, 500_000, 1_000_000, 1_500_000]
    assert server.max_concurrent(PATH) >= 2
    assert max(p.detail["connections"] for p in seen) >= 2


def test_segmented_download_resumes_each_segment(server: FaultServer, tmp_path: Path) -> None:
    server.add_fault(PATH, Fault(reset_after=200_000), times=2)
    comp = component(tmp_path, server.url(PATH), connections=4, threshold=100_000)
    got, _ = fetch(comp)
    assert_done(got, comp)
    starts = [r.range_start for r in gets(server)]
    assert len(starts) > 4 and any(s not in (0, 500_000, 1_000_000, 1_500_000) for s in starts)


def test_stop_is_prompt_and_leaves_resumable_state(server: FaultServer, tmp_path: Path) -> None:
    server.throttle(PATH, 500_000)
    comp = component(tmp_path, server.url(PATH), stall=30.0)
    stop, seen, out = threading.Event(), [], {}

    def run() -> None:
        try:
            fetcher().fetch(comp, seen.append, stop)
        except TemporaryError as e:
            out["error"] = e

    t = threading.Thread(target=run)
    t.start()
    deadline = time.monotonic() + 10
    while not seen and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)
    stop.set()
    t.join(timeout=5)
    assert not t.is_alive(), "fetch did not return within 5 s of stop"
    assert out["error"].message == "stopped" and out["error"].delay == 0
    assert all(b.bytes_done >= a.bytes_done for a, b in itertools.pairwise(seen))
    server.throttle(PATH, None)
    got, _ = fetch(comp)
    assert_done(got, comp)
    assert gets(server)[-1].range_start


def test_progress_is_throttled(server: FaultServer, tmp_path: Path) -> None:
    server.throttle(PATH, 1_500_000)
    stamps: list[float] = []
    comp = component(tmp_path, server.url(PATH))
    fetcher().fetch(comp, lambda p: stamps.append(time.monotonic()), threading.Event())
    gaps = [b - a for a, b in itertools.pairwise(stamps[:-1])]  # the last report is forced
    assert len(stamps) >= 3 and min(gaps) >= 0.24


def test_secrets_never_leak(tmp_path: Path) -> None:
    token, sig = "SECRET-TOKEN-123", "SIGNATURE-456"
    with FaultServer({PATH: DATA}, bearer=token) as srv:
        srv.add_fault(PATH, Fault(reset_after=300_000))
        srv.add_fault(PATH, Fault(status=503, retry_after="0"))
        comp = component(tmp_path, srv.url(PATH) + f"?sig={sig}", auth=HttpAuth(bearer_env="DS_TOKEN"))
        sidecar = comp.archive.with_name("train.tar.part.json")
        texts: list[str] = []

        def progress(p: FetchProgress) -> None:
            texts.append(repr(p))
            if sidecar.exists():
                texts.append(sidecar.read_text())

        with capture_logs() as logs:
            got = fetcher(env={"DS_TOKEN": token}).fetch(comp, progress, threading.Event())
            assert_done(got, comp)
            assert srv.requests()[0].headers["authorization"] == f"Bearer {token}"
            bad = component(tmp_path / "bad", srv.url(PATH) + f"?sig={sig}", auth=HttpAuth(bearer_env="DS_TOKEN"))
            with pytest.raises(PermanentError) as err:
                fetcher(env={"DS_TOKEN": "SECRET-TOKEN-999"}).fetch(bad, progress, threading.Event())
    everything = "\n".join([*texts, repr(logs), str(err.value)])
    assert any("part.json" in t or '"segments"' in t for t in texts), "the sidecar was never read"
    assert len(events(logs, "download.retrying")) == 2
    for secret in (token, sig, "SECRET-TOKEN-999"):
        assert secret not in everything
    assert "DS_TOKEN" in str(err.value)


def test_basic_auth_from_env(tmp_path: Path) -> None:
    with FaultServer({PATH: DATA}, basic=("alice", "pa55word")) as srv:
        comp = component(tmp_path, srv.url(PATH), auth=HttpAuth(user_env="U", password_env="P"))
        got, _ = fetch(comp, env={"U": "alice", "P": "pa55word"})
        assert_done(got, comp)
        with pytest.raises(PermanentError, match="env var P is not set"):
            fetch(component(tmp_path / "x", srv.url(PATH), auth=HttpAuth(user_env="U", password_env="P")),
                  env={"U": "alice"})


def test_fetch_url_to_caps_the_size(server: FaultServer, tmp_path: Path) -> None:
    server.put("/t.torrent", b"d4:infoe" * 100)
    dest = tmp_path / "t.torrent"
    assert fetch_url_to(server.url("/t.torrent"), dest, max_bytes=10_000) == dest
    assert dest.read_bytes() == b"d4:infoe" * 100
    with pytest.raises(PermanentError, match="more than the 1000 allowed"):
        fetch_url_to(server.url(PATH), tmp_path / "big", max_bytes=1000)
    assert len(gets(server)) == 1


def test_a_second_fetch_of_the_same_file_waits(server: FaultServer, tmp_path: Path) -> None:
    server.throttle(PATH, 400_000)
    comp = component(tmp_path, server.url(PATH))
    stop = threading.Event()

    def run_first() -> None:
        with pytest.raises(TemporaryError):
            fetch(comp, stop)

    first = threading.Thread(target=run_first)
    first.start()
    try:
        deadline = time.monotonic() + 10
        while not server.requests(PATH) and time.monotonic() < deadline:
            time.sleep(0.02)
        with pytest.raises(TemporaryError, match="another download of this file is running"):
            fetch(comp)
    finally:
        stop.set()
        first.join(timeout=10)


def test_a_refusing_url_fails_over_to_the_mirror(server: FaultServer, tmp_path: Path) -> None:
    comp = component(tmp_path, server.url("/gone.tar"), mirrors=(server.url(PATH),))
    with capture_logs() as logs:
        got, _ = fetch(comp)
    assert_done(got, comp)
    assert len(server.requests("/gone.tar")) == 1
    assert "404" in events(logs, "download.failed_over")[0]["reason"]


def test_prefix_hasher_takes_chunks_in_order_and_reads_back_the_rest(tmp_path: Path) -> None:
    from datasetd.errors import Restart
    from datasetd.sources.http.prefixhash import PrefixHasher

    part = tmp_path / "f.part"
    fd = os.open(part, os.O_RDWR | os.O_CREAT, 0o644)
    done = [0, 0]  # two segments of 1 MB: bytes written and counted in each
    stop = threading.Event()
    hasher = PrefixHasher(fd, md5=True)
    try:
        hasher.follow(lambda: done[0] + (done[1] if done[0] == MB else 0))
        for seg in (1, 0):  # the second segment arrives first: it can only be read back
            for off in range(seg * MB, (seg + 1) * MB, 100_000):
                chunk = DATA[off:min(off + 100_000, (seg + 1) * MB)]
                os.pwrite(fd, chunk, off)
                hasher.feed(off, chunk)
                done[seg] += len(chunk)
        sha, md5 = hasher.digests(len(DATA), stop)
        assert (sha, md5) == (SHA, hashlib.md5(DATA, usedforsecurity=False).hexdigest())
        os.ftruncate(fd, MB // 2)  # someone cuts the part: the prefix it claims is no longer there
        hasher.follow(lambda: len(DATA))
        with pytest.raises(Restart, match="truncated"):
            hasher.digests(len(DATA), stop)
    finally:
        hasher.close()
        os.close(fd)
