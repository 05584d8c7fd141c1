"""A torrent fetch returns only bytes that survive a power cut: the journal records it verified at once.

libtorrent writes through the page cache and never flushes a file to the device, so until the
fetch did, a downloaded archive recorded as verified could be holes after power loss (for an
archive that is the component itself, nothing would ever read it again). `save_path` is ext4 on
a loop device with the kernel's writeback off (tests/ext4_loop.py): the moment the fetcher process
reports its result, a copy of the device is taken, "rebooted" (e2fsck replays its journal) and
mounted, and the file there must be the whole pinned one.
"""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path
from typing import Any

import ext4_loop
from datasetd import platform
from torrent_helpers import EventReader, Seeder, fetcher_process, free_port, make_torrent

pytestmark = ext4_loop.power_cut_marks()

MiB = 1024 * 1024


def test_the_fetched_file_is_on_the_device_when_the_fetch_returns(tmp_path: Path) -> None:
    seed_dir = tmp_path / "seed"
    seed_dir.mkdir()
    data = random.Random(15).randbytes(6 * MiB + 12345)
    (seed_dir / "train.tar").write_bytes(data)
    torrent = tmp_path / "train.torrent"
    make_torrent(seed_dir / "train.tar", torrent)
    image, root = tmp_path / "root.img", tmp_path / "root"
    ext4_loop.make_image(image, size_mib=64)
    with (ext4_loop.flusher_off(), ext4_loop.mounted(image, root, "commit=600") as dev,
          Seeder(torrent, seed_dir) as seeder):
        config: dict[str, Any] = {
            "settings": {"ip": "127.0.0.2", "port": free_port("127.0.0.2"), "peers": [seeder.address]},
            "component": {"name": "train", "torrent": str(torrent), "file": "train.tar",
                          "save_path": str(root / "downloads"), "size": len(data),
                          "sha256": hashlib.sha256(data).hexdigest()},
            "state_dir": str(root / ".datasetd"),
            "linger": True,  # still running (seeding) when the copy is taken: nothing of its exit helps
        }
        fetcher = fetcher_process(config)
        try:
            EventReader(fetcher).wait_for(lambda e: e.get("event") == "fetch.result", 60, "the fetch result")
            ext4_loop.settle(dev)
            cut = ext4_loop.copy_device(image, tmp_path / "cut.img")
        finally:
            fetcher.kill()
            fetcher.wait(10)
    ext4_loop.fsck(cut)
    with ext4_loop.mounted(cut, tmp_path / "after"):
        kept = tmp_path / "after" / "downloads" / "train.tar"
        assert kept.exists(), "the fetched file is not on the device at all"
        assert hashlib.sha256(kept.read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest(), \
            "the fetched file on the device is not the verified one (holes where the page cache held it)"


def test_early_writeback_sends_a_range_to_the_device_without_an_fsync(tmp_path: Path) -> None:
    """platform.start_writeback, which the in-order digest calls for each piece it took: the range's
    dirty pages reach the device with the kernel's own writeback off, so the fetch's closing fsync
    finds them written."""
    image, root = tmp_path / "root.img", tmp_path / "root"
    ext4_loop.make_image(image, size_mib=64)
    with ext4_loop.flusher_off(), ext4_loop.mounted(image, root, "commit=600") as dev:
        stat = Path("/sys/block") / Path(dev).name / "stat"
        path = root / "file.bin"
        path.write_bytes(random.Random(3).randbytes(8 * MiB))  # dirty in the page cache, nothing sent
        ext4_loop.settle(dev)
        before = int(stat.read_text().split()[6])  # sectors written
        fd = os.open(path, os.O_RDONLY)
        try:
            platform.start_writeback(fd, 0, 8 * MiB)
        finally:
            os.close(fd)
        ext4_loop.settle(dev)
        written = (int(stat.read_text().split()[6]) - before) * 512
    assert written >= 8 * MiB, f"only {written} bytes reached the device"
