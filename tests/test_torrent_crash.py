"""A fetcher process killed with SIGKILL mid-download resumes from its resume data, without a full recheck."""

from __future__ import annotations

import hashlib
import os
import random
import signal
from pathlib import Path
from typing import Any

from torrent_helpers import EventReader, Seeder, fetcher_process, free_port, make_torrent

MiB = 1024 * 1024


def test_sigkill_mid_download_resumes_without_recheck(tmp_path: Path) -> None:
    seed_dir = tmp_path / "seed"
    seed_dir.mkdir()
    data = random.Random(9).randbytes(8 * MiB)
    (seed_dir / "train.bin").write_bytes(data)
    torrent = tmp_path / "train.torrent"
    make_torrent(seed_dir / "train.bin", torrent)  # 32 pieces of 256 KiB
    save_path = tmp_path / "root" / "downloads"
    with Seeder(torrent, seed_dir, upload_limit=2 * MiB) as seeder:
        config: dict[str, Any] = {
            "settings": {"ip": "127.0.0.2", "port": free_port("127.0.0.2"), "peers": [seeder.address],
                         "stall_timeout": 60.0},
            "component": {"name": "train", "torrent": str(torrent), "file": "train.bin",
                          "save_path": str(save_path), "size": len(data),
                          "sha256": hashlib.sha256(data).hexdigest()},
            "state_dir": str(tmp_path / "root" / ".datasetd"),
            "tuning": {"resume_interval": 0.5, "health_interval": 0.5},
        }
        first = fetcher_process(config)
        try:
            saved = EventReader(first).wait_for(
                lambda e: e.get("event") == "torrent.resume_saved" and 8 <= e["pieces"] < 24, 60,
                "resume data with a quarter of the pieces")
            os.kill(first.pid, signal.SIGKILL)
            assert first.wait(10) == -signal.SIGKILL
        finally:
            first.kill()
        second = fetcher_process(config)
        try:
            events = EventReader(second)
            resumed = events.wait_for(lambda e: e.get("event") == "torrent.resumed", 30, "torrent.resumed")
            first_progress = events.wait_for(lambda e: e.get("event") == "fetch.progress", 30, "progress")
            result = events.wait_for(lambda e: e.get("event") == "fetch.result", 60, "the fetch result")
            second.stdin.close()  # type: ignore[union-attr]
            assert second.wait(20) == 0
        finally:
            second.kill()
    assert resumed["pieces"] >= saved["pieces"], "the restart must start from the saved pieces"
    assert first_progress["done"] >= saved["pieces"] * 256 * 1024 * 0.9
    assert "torrent.rechecking" not in events.names(), "resume data was rejected: a full recheck ran"
    assert result["sha256"] == hashlib.sha256(data).hexdigest()
    assert (save_path / "train.bin").read_bytes() == data
