"""While an archive's index pass runs (in a worker process), status.json shows its bytes, rate and ETA."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
import time
from pathlib import Path
from typing import Any

from conftest import datasetd_cmd, write_manifest

MEMBERS = 300_000  # tiny members: the header parse takes seconds even on a quiet machine, so several reports land


def many_member_tar(path: Path) -> None:
    with path.open("wb") as f, tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for i in range(MEMBERS):
            info = tarfile.TarInfo(f"d{i // 1000:03d}/f{i:06d}")
            info.size = 1
            tf.addfile(info, io.BytesIO(b"x"))


def indexing(status_path: Path) -> dict[str, Any] | None:
    try:
        comp: dict[str, Any] = json.loads(status_path.read_text())["components"]["flat"]
    except (OSError, ValueError, KeyError):
        return None
    return comp


def test_status_shows_index_pass_bytes_rate_and_eta(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "sources").mkdir(parents=True)
    archive = root / "sources" / "flat.tar"
    many_member_tar(archive)
    manifest = write_manifest(tmp_path / "m.toml", root, """stop_timeout = 1
[components.flat]
source = "file"
path = "sources/flat.tar"
unpack = "tar"
into = "flat"
""")
    status_path = root / ".datasetd" / "status.json"
    seen: list[dict[str, Any]] = []
    proc = subprocess.Popen([*datasetd_cmd(), "apply", str(manifest)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            comp = indexing(status_path)
            if comp is None:
                pass  # not written yet
            elif comp["detail"].get("step") == "indexing":
                if not seen or comp != seen[-1]:
                    seen.append(comp)
            elif seen:
                break  # the index pass ended: extraction runs now
            time.sleep(0.05)
        assert seen, "status never showed the index pass"
        after = indexing(status_path)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    size = archive.stat().st_size
    assert all(c["phase"] == "unpacking" and c["bytes_total"] == size for c in seen), seen
    done = [c["bytes_done"] for c in seen]
    assert done == sorted(done) and done[-1] > done[0] > 0 and done[-1] <= size, done
    assert any(c["rate"] > 0 and c["eta_seconds"] is not None and c["eta_seconds"] > 0 for c in seen), seen
    assert after is not None and after["detail"].get("step") != "indexing", after
    assert not (root / ".datasetd" / "progress" / "flat.index").exists(), "the index pass left its progress file"
