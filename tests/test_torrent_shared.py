"""Two components of one torrent share one libtorrent handle: both complete, whoever adds first.

Real libtorrent sessions over loopback. The race this guards against lived in
`Session.add`: it looked for the torrent under the lock, dropped the lock to
build the add parameters, then added; two concurrent adds of one torrent both
found nothing, and the second entry replaced the first, whose lease then got no
alerts and whose file another lease's priorities switched off. A thread switch
interval of one microsecond makes the interleaving that exposed it likely in
every round instead of rare.
"""

from __future__ import annotations

import hashlib
import random
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from datasetd.sources.base import Fetched
from datasetd.sources.torrent.fetcher import TorrentFetcher
from datasetd.sources.torrent.lt import Lease, Session, read_meta
from datasetd.sources.torrent.types import AddRequest
from torrent_helpers import Seeder, loopback_settings, make_torrent, torrent_component

MiB = 1024 * 1024
FILES = ("a.bin", "b.bin")
T = TypeVar("T")


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Path, dict[str, bytes], Seeder]]:
    """A two-file torrent ('pair/a.bin', 'pair/b.bin') and a seeder of it on 127.0.0.1."""
    folder = tmp_path / "seed" / "pair"
    folder.mkdir(parents=True)
    data = {name: random.Random(name).randbytes(MiB + 777) for name in FILES}
    for name, blob in data.items():
        (folder / name).write_bytes(blob)
    torrent = tmp_path / "pair.torrent"
    make_torrent(folder, torrent, piece_length=64 * 1024)
    with Seeder(torrent, folder.parent) as seeder:
        yield torrent, data, seeder


@pytest.fixture
def fine_switching() -> Iterator[None]:
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


def _together(n: int, fn: Callable[[int], T]) -> list[T | None]:
    """Run fn(i) for i in range(n) in threads released at once; return results in order."""
    barrier = threading.Barrier(n)
    out: list[T | None] = [None] * n
    errors: list[BaseException] = []

    def run(i: int) -> None:
        barrier.wait()
        try:
            out[i] = fn(i)
        except BaseException as e:  # re-raised in the test's thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    if errors:
        raise errors[0]
    return out


def _wait_complete(lease: Lease, index: int, size: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if lease.file_done(index) >= size:
            return True
        time.sleep(0.02)
    return False


def _wait_bytes(path: Path, want: bytes, timeout: float) -> bool:
    digest = hashlib.sha256(want).hexdigest()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and hashlib.sha256(path.read_bytes()).hexdigest() == digest:
            return True
        time.sleep(0.05)
    return False


def test_concurrent_adds_of_one_torrent_share_it_and_both_files_complete(
        tmp_path: Path, pair: tuple[Path, dict[str, bytes], Seeder], fine_switching: None) -> None:
    torrent, data, seeder = pair
    meta = read_meta(torrent)
    files = [meta.find(f"pair/{name}") for name in FILES]
    assert all(files)
    ip, port = seeder.address.rsplit(":", 1)
    session = Session(loopback_settings("127.0.0.2"))
    try:
        for round_ in range(12):
            save = tmp_path / f"round{round_}"
            req = AddRequest(key=meta.key, save_path=save, resume_path=None, torrent_file=torrent,
                             peers=((ip, int(port)),), files_off=True)

            def add_and_want(i: int, req: AddRequest = req) -> Lease:
                lease = session.add(req)[0]
                f = files[i]
                assert f is not None
                lease.want_file(f.index, meta.num_files)
                return lease

            leases = [x for x in _together(2, add_and_want) if x is not None]
            sys.setswitchinterval(0.005)  # the race is in the adds; the download may run at normal pace
            try:
                for lease, f in zip(leases, files, strict=True):
                    assert f is not None
                    assert _wait_complete(lease, f.index, f.size, 20.0), (
                        f"round {round_}: {f.path} never completed: the other add replaced this lease's "
                        f"entry (priorities {lease.piece_priorities()})")
                for name in FILES:
                    # "complete" counts pieces that passed their hash; libtorrent may still be writing
                    # them out: wait for the bytes, compare digests (a bytes diff of MBs takes minutes)
                    assert _wait_bytes(save / "pair" / name, data[name], 20.0), f"round {round_}: {name} differs"
            finally:
                for lease in leases:
                    session.release(lease)
                sys.setswitchinterval(1e-6)
    finally:
        session.close(timeout=2.0)


def test_two_components_of_one_torrent_fetched_at_once_both_complete(
        tmp_path: Path, pair: tuple[Path, dict[str, bytes], Seeder]) -> None:
    torrent, data, seeder = pair
    settings = loopback_settings("127.0.0.3", peers=(seeder.address,), stall_timeout=20.0)
    fetcher = TorrentFetcher(settings, tmp_path / "root" / ".datasetd", health_interval=0.5)
    comps = [torrent_component(name, str(torrent), f"pair/{name}", tmp_path / "root" / "downloads",
                               size=len(data[name]), sha256=hashlib.sha256(data[name]).hexdigest())
             for name in FILES]
    stop = threading.Event()
    try:
        got = _together(2, lambda i: fetcher.fetch(comps[i], lambda _p: None, stop))
    finally:
        fetcher.close()
    for comp, fetched, name in zip(comps, got, FILES, strict=True):
        assert isinstance(fetched, Fetched)
        assert fetched.sha256 == hashlib.sha256(data[name]).hexdigest()
        assert hashlib.sha256(comp.archive.read_bytes()).hexdigest() == hashlib.sha256(data[name]).hexdigest()
