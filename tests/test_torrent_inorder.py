"""The torrent digest taken in file order as pieces pass (sources/torrent/frontier.py, inorder.py).

The frontier reads each passed piece back from the real file: these tests write
that file in any order, late (a piece that passed before its write landed reads as
a hole), and with a lying peer's bytes still in it, and the digest must be the
file's own in every case. Then a real fetch with a lying libtorrent peer beside an
honest one: the pieces it corrupted fail libtorrent's check and never reach the
digest, which is taken in order and matches the pin.
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import structlog

from datasetd.sources.torrent.fetcher import TorrentFetcher
from datasetd.sources.torrent.frontier import Frontier
from datasetd.sources.torrent.lt import Session, read_meta
from datasetd.sources.torrent.types import AddRequest, Layout
from torrent_helpers import Seeder, loopback_settings, make_torrent, torrent_component

PIECE = 64 * 1024
MiB = 1024 * 1024


def _layout(data: bytes) -> Layout:
    n = -(-len(data) // PIECE)
    hashes = tuple(hashlib.sha1(data[p * PIECE:(p + 1) * PIECE]).digest() for p in range(n))
    return Layout(offset=0, size=len(data), torrent_size=len(data), piece_length=PIECE, first_piece=0,
                  last_piece=n - 1, hashes=hashes)


def _write(path: Path, piece: int, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data[piece * PIECE:(piece + 1) * PIECE], piece * PIECE)
    finally:
        os.close(fd)


def _sparse(path: Path, size: int) -> None:
    with open(path, "wb") as f:  # as libtorrent leaves it: full length, holes where nothing landed yet
        f.truncate(size)


def _frontier(tmp_path: Path, data: bytes, layout: Layout | None = None) -> tuple[Path, Frontier]:
    """A frontier over a sparse file of `data`'s length, as libtorrent leaves it before any write."""
    path = tmp_path / "train.tar"
    _sparse(path, len(data))
    return path, Frontier(path, layout or _layout(data), md5=False)


def _land(frontier: Frontier, path: Path, data: bytes, pieces: range) -> None:
    """Each piece written whole, then passed fresh (its piece_finished alert)."""
    for piece in pieces:
        _write(path, piece, data)
        frontier.passed((piece,), fresh=True)


def _with_zero_pages(seed: int) -> bytes:
    """Eight pieces of random bytes; piece 2 holds zero pages, as a tar's record padding has."""
    data = bytearray(random.Random(seed).randbytes(8 * PIECE))
    data[2 * PIECE + 8192:2 * PIECE + 20480] = bytes(12288)
    return bytes(data)


def _next_within(frontier: Frontier, want: int, seconds: float) -> int:
    """The frontier's prefix once it reached `want` or `seconds` passed, whichever came first."""
    deadline = time.monotonic() + seconds
    while frontier.next < want and time.monotonic() < deadline:
        time.sleep(0.01)
    return frontier.next


def _digest(frontier: Frontier, fence: Any = lambda: None) -> str:
    d = frontier.digests(fence, threading.Event())
    assert d is not None
    return d.sha256


@pytest.mark.parametrize("seed", range(6))
def test_the_digest_is_the_files_whatever_the_order_and_however_late_the_writes(tmp_path: Path,
                                                                                seed: int) -> None:
    rng = random.Random(seed)
    data = rng.randbytes(37 * PIECE + 1234)  # a short last piece too
    path = tmp_path / "train.tar"
    _sparse(path, len(data))
    layout = _layout(data)
    frontier = Frontier(path, layout, md5=False)
    late: list[int] = []
    try:
        for piece in rng.sample(range(layout.last_piece + 1), layout.last_piece + 1):
            if rng.random() < 0.3:
                late.append(piece)  # passed, but its write lands later: the frontier meets a hole
            else:
                _write(path, piece, data)
            frontier.passed((piece,), fresh=True)
            if late and rng.random() < 0.3:
                _write(path, late.pop(rng.randrange(len(late))), data)
            time.sleep(0.001)
        for piece in late:
            _write(path, piece, data)
        assert _digest(frontier) == hashlib.sha256(data).hexdigest()
    finally:
        frontier.close()


def test_a_write_half_landed_is_read_again_after_the_fence(tmp_path: Path) -> None:
    data = random.Random(1).randbytes(8 * PIECE)
    path, frontier = _frontier(tmp_path, data)
    try:
        for piece in range(8):
            _write(path, piece, data[:3 * PIECE + 53248] if piece == 3 else data)  # 3: torn mid-block
            frontier.passed((piece,), fresh=True)
        time.sleep(0.05)
        assert frontier.next == 3  # waits at the hole: zeros are never taken for a fresh piece's bytes
        # libtorrent's flush_cache: every write of the torrent is in the file once it returns.
        assert _digest(frontier, fence=lambda: _write(path, 3, data)) == hashlib.sha256(data).hexdigest()
    finally:
        frontier.close()


def test_zeros_of_the_datas_own_are_taken_at_once_not_at_the_fence(tmp_path: Path) -> None:
    data = _with_zero_pages(5)
    path, frontier = _frontier(tmp_path, data)
    try:
        _land(frontier, path, data, range(8))
        taken = _next_within(frontier, 8, 1.0)  # well inside RETRY_FOR: no waiting for the fence
        assert taken == 8, "a piece whose SHA-1 matches was held as if its write had not landed"
        assert _digest(frontier) == hashlib.sha256(data).hexdigest()
    finally:
        frontier.close()


def test_a_fence_vouches_only_for_the_pieces_that_passed_before_it_was_asked_for(tmp_path: Path) -> None:
    data = random.Random(7).randbytes(8 * PIECE)
    path, frontier = _frontier(tmp_path, data)
    try:
        _land(frontier, path, data, range(3))
        mark = frontier.fence_mark(1)  # the fencer asks libtorrent for a fence now...
        assert mark is not None
        _write(path, 3, data[:3 * PIECE + 53248])  # torn mid-block: 3 passed after the fence was asked for
        frontier.passed((3,), fresh=True)
        frontier.fenced(mark)  # ...and it passed: 0-2 are in the file whole, 3 may not be
        time.sleep(0.1)
        assert frontier.next == 3, "a piece that passed after the fence was asked for was taken with its hole"
        _land(frontier, path, data, range(4, 8))
        assert _digest(frontier, fence=lambda: _write(path, 3, data)) == hashlib.sha256(data).hexdigest()
    finally:
        frontier.close()


def test_after_a_fence_zeros_of_the_datas_own_are_taken_without_a_sha1(tmp_path: Path) -> None:
    data = _with_zero_pages(8)
    # A v2-only torrent has no piece SHA-1 to tell zeros from a hole: only a fence can vouch for them.
    path, frontier = _frontier(tmp_path, data, replace(_layout(data), hashes=None))

    def fencer() -> None:  # as inorder.py's, with a fence that passes at once (every write landed first)
        while (mark := frontier.fence_mark(1)) is not None:
            frontier.fenced(mark)

    thread = threading.Thread(target=fencer)
    thread.start()
    try:
        _land(frontier, path, data, range(8))
        taken = _next_within(frontier, 8, 1.0)  # well inside RETRY_FOR: the final fence is not needed
        assert taken == 8, "a fenced piece with zero pages was held as if its write had not landed"
        assert _digest(frontier) == hashlib.sha256(data).hexdigest()
    finally:
        frontier.close()
        thread.join()


def test_libtorrent_posts_cache_flushed_for_each_flush_cache_and_each_finish_and_for_nothing_else(
        tmp_path: Path) -> None:
    """What Session.flush counts on to know that its own fence passed, whatever the alerts' order."""
    data = random.Random(9).randbytes(4 * MiB + 5)
    (tmp_path / "seed").mkdir()
    (tmp_path / "seed" / "train.bin").write_bytes(data)
    torrent = tmp_path / "train.torrent"
    make_torrent(tmp_path / "seed" / "train.bin", torrent)
    with Seeder(torrent, tmp_path / "seed", ip="127.0.0.1") as seeder:
        seeder.wait_ready()
        ip, port = seeder.address.rsplit(":", 1)
        session = Session(loopback_settings("127.0.0.2"))
        try:
            req = AddRequest(key=read_meta(torrent).key, save_path=tmp_path / "leech",
                             resume_path=tmp_path / "train.resume", torrent_file=torrent, peers=((ip, int(port)),))
            lease = session.add(req)[0]
            assert lease.save_resume(10.0)  # its flush_disk_cache flag flushes too, and posts no cache_flushed
            deadline = time.monotonic() + 30
            while lease.file_done(0) < len(data) and time.monotonic() < deadline:
                time.sleep(0.02)
            for _ in range(2):
                assert lease.flush(10.0)
                assert lease.save_resume(10.0)
            time.sleep(0.5)  # time for an alert nobody counted on
            e = lease.entry
            assert (e.flush_requests, e.finishes) == (2, 1)
            assert e.flushed == e.flush_requests + e.finishes, "a cache_flushed alert for something else"
        finally:
            session.close(timeout=2.0)


def test_a_lying_peers_bytes_left_in_the_file_never_reach_the_digest(tmp_path: Path) -> None:
    data = random.Random(2).randbytes(8 * PIECE)
    lie = bytearray(data)
    lie[3 * PIECE:4 * PIECE] = random.Random(3).randbytes(PIECE)  # no hole in it: nothing looks missing
    path, frontier = _frontier(tmp_path, data)
    try:
        _write(path, 3, bytes(lie))  # the lie was written, then failed libtorrent's SHA-1 check
        frontier.failed(3)
        for piece in (0, 1, 2, 4, 5, 6, 7):
            _write(path, piece, data)
            frontier.passed((piece,), fresh=True)
        frontier.passed((3,), fresh=True)  # an honest peer's copy passed; its write has not landed yet
        time.sleep(0.05)
        assert frontier.next == 3  # the lie is still in the file: its SHA-1 says so, not a hole
        assert _digest(frontier, fence=lambda: _write(path, 3, data)) == hashlib.sha256(data).hexdigest()
    finally:
        frontier.close()


@pytest.fixture
def logs() -> Iterator[list[dict[str, Any]]]:
    with structlog.testing.capture_logs() as captured:
        yield captured


def test_a_lying_peers_pieces_fail_and_the_digest_taken_in_order_matches_the_pin(
        tmp_path: Path, logs: list[dict[str, Any]]) -> None:
    data = random.Random(4).randbytes(8 * MiB + 777)
    honest_dir, liar_dir = tmp_path / "honest", tmp_path / "liar"
    for d in (honest_dir, liar_dir):
        d.mkdir()
        (d / "train.bin").write_bytes(data)
    torrent = tmp_path / "train.torrent"
    make_torrent(honest_dir / "train.bin", torrent)
    # Slow, so the liar (at full speed) delivers many of the pieces first.
    with Seeder(torrent, honest_dir, ip="127.0.0.1", upload_limit=2_000_000) as honest, \
            Seeder(torrent, liar_dir, ip="127.0.0.3") as liar:
        honest.wait_ready()
        liar.wait_ready()
        # Checked and seeding with good data; now its disk returns other bytes for every piece.
        (liar_dir / "train.bin").write_bytes(bytes(b ^ 0x5A for b in data))
        settings = loopback_settings("127.0.0.2", peers=(liar.address, honest.address), stall_timeout=30.0)
        fetcher = TorrentFetcher(settings, tmp_path / "root" / ".datasetd", health_interval=0.5)
        comp = torrent_component("train", str(torrent), "train.bin", tmp_path / "root" / "downloads",
                                 size=len(data), sha256=hashlib.sha256(data).hexdigest())
        try:
            got = fetcher.fetch(comp, lambda _: None, threading.Event())
        finally:
            fetcher.close()
        lied = liar.uploaded()
    assert lied > 0, "the lying peer sent nothing: the test proves nothing"
    assert got.sha256 == hashlib.sha256(data).hexdigest()
    assert comp.archive.read_bytes() == data
    done = [e for e in logs if e["event"] == "torrent.completed"]
    assert done and done[0]["hashed_in_order"] is True, "the digest was not the one taken as pieces passed"
    assert done[0]["pieces_failed"] > 0, "the liar's failed pieces never reached the in-order digest"
    assert not [e for e in logs if e["event"] in ("torrent.file_reread", "torrent.digest_mismatch")]


def test_a_piece_whose_alert_was_lost_is_passed_when_the_download_is_done(tmp_path: Path) -> None:
    data = random.Random(6).randbytes(8 * PIECE)
    path, frontier = _frontier(tmp_path, data)
    try:
        for piece in range(8):
            if piece != 2:  # piece 2's piece_finished alert never came, and its write lags
                _write(path, piece, data)
                frontier.passed((piece,), fresh=True)
        time.sleep(0.05)
        assert frontier.next == 2
        assert frontier.missed(range(8)) is True  # libtorrent's have-list, once it counts the file done
        assert frontier.missed(range(8)) is False
        time.sleep(0.05)
        assert frontier.next == 2  # passed now, but fresh: its hole is a write not landed, not data
        stop = threading.Event()
        timer = threading.Timer(10.0, stop.set)  # a digest waiting for ever at piece 2
        timer.start()
        try:
            # Its hole is not taken: the fence (libtorrent's flush_cache) lands the write.
            d = frontier.digests(lambda: _write(path, 2, data), stop)
        finally:
            timer.cancel()
        assert d is not None and d.sha256 == hashlib.sha256(data).hexdigest()
    finally:
        frontier.close()


def test_a_fetch_whose_piece_alert_was_lost_still_ends_with_the_digest_taken_in_order(
        tmp_path: Path, logs: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    from datasetd.sources.torrent import inorder

    data = random.Random(7).randbytes(4 * MiB + 333)
    seed_dir = tmp_path / "seed"
    seed_dir.mkdir()
    (seed_dir / "train.bin").write_bytes(data)
    torrent = tmp_path / "train.torrent"
    make_torrent(seed_dir / "train.bin", torrent)
    lost: list[int] = []
    on_piece = inorder.InOrder._on_piece

    def losing_one(self: inorder.InOrder, piece: int, ok: bool) -> None:
        if ok and not lost:
            lost.append(piece)  # as if libtorrent's full alert queue had dropped this one
            return
        on_piece(self, piece, ok)

    monkeypatch.setattr(inorder.InOrder, "_on_piece", losing_one)
    stop = threading.Event()
    with Seeder(torrent, seed_dir, ip="127.0.0.1") as seeder:
        seeder.wait_ready()
        settings = loopback_settings("127.0.0.2", peers=(seeder.address,), stall_timeout=30.0)
        fetcher = TorrentFetcher(settings, tmp_path / "root" / ".datasetd", health_interval=0.5)
        comp = torrent_component("train", str(torrent), "train.bin", tmp_path / "root" / "downloads",
                                 size=len(data), sha256=hashlib.sha256(data).hexdigest())
        timer = threading.Timer(30.0, stop.set)  # a digest waiting for ever for the lost piece
        timer.start()
        try:
            got = fetcher.fetch(comp, lambda _: None, stop)
        finally:
            timer.cancel()
            fetcher.close()
    assert lost, "no piece alert was lost: the test proves nothing"
    assert not stop.is_set()
    assert got.sha256 == hashlib.sha256(data).hexdigest()
    done = [e for e in logs if e["event"] == "torrent.completed"]
    assert done and done[0]["hashed_in_order"] is True
