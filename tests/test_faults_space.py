"""A small tmpfs as the data root: predicted shortfalls, inode exhaustion, ENOSPC mid-run.

Each case: a clear error naming the filesystem, every good byte kept, and
convergence once space is freed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import class_tree, datasetd_cmd, gnu_tar_reference, journal_units, sha256, tree_digest, write_manifest
from datasetd import cli
from datasetd.demo import build_train

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root (CI runs as root)")


@contextlib.contextmanager
def tmpfs(path: Path, size: str, inodes: int = 100_000) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},nr_inodes={inodes}", "tmpfs", str(path)],
                   check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def remount(path: Path, size: str, inodes: int = 100_000) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size},nr_inodes={inodes}", str(path)], check=True)


def train_setup(tmp_path: Path, root: Path, classes: int, files: int, size: tuple[int, int]) -> tuple[Path, dict]:
    """The archive lives outside the tmpfs (a NAS path); only extraction targets the root."""
    wnids = [f"n{2000000 + i:08d}" for i in range(classes)]
    outer = build_train(wnids, files=files, size=size)
    archive = tmp_path / "nas" / "train.tar"
    archive.parent.mkdir()
    archive.write_bytes(outer)
    ref = gnu_tar_reference(archive, tmp_path / "gnu")
    m = write_manifest(tmp_path / "m.toml", root, f"""
[components.train]
source = "file"
path = "{archive}"
size = {len(outer)}
sha256 = "{sha256(outer)}"
unpack = "class-tars"
into = "train"
""", workers=1)
    return m, ref


def status_error(root: Path) -> str:
    import json

    return json.loads((root / ".datasetd/status.json").read_text())["components"]["train"]["last_error"] or ""


def test_plan_predicts_a_byte_shortfall_and_apply_refuses_to_start(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with tmpfs(tmp_path / "fs", "600k") as root:
        m, _ = train_setup(tmp_path, root, classes=6, files=10, size=(9000, 12000))
        assert cli.main(["plan", str(m)]) == 1
        assert "DOES NOT FIT" in capsys.readouterr().out
        assert cli.main(["apply", str(m)]) == 1
        err = capsys.readouterr().err
        assert str(root) in err and "free" in err
        assert not (root / "train").exists()


def test_inode_exhaustion_is_found_after_indexing_before_any_write(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "fs", "50m", inodes=30) as root:
        m, ref = train_setup(tmp_path, root, classes=4, files=12, size=(100, 400))
        assert cli.main(["apply", str(m)]) == 1
        err = status_error(root)
        assert "inodes" in err and str(root) in err, err
        assert not list((root / "train").glob("n*")) if (root / "train").exists() else True
        remount(root, "50m", inodes=1000)
        assert cli.main(["apply", str(m)]) == 0
        assert tree_digest(root / "train") == ref


def test_disk_filled_mid_extraction_keeps_good_data_and_converges_after(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "fs", "24m") as root:
        m, ref = train_setup(tmp_path, root, classes=120, files=20, size=(2000, 6000))
        proc = subprocess.Popen([*datasetd_cmd(), "--log-format", "json", "apply", str(m)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        _wait_for_extracted(root, proc)
        os.killpg(proc.pid, signal.SIGSTOP)  # freeze coordinator and workers while the disk fills up
        filler = root / "someone-elses-file"
        _fill(filler)
        os.killpg(proc.pid, signal.SIGCONT)
        _out, err = proc.communicate(timeout=120)
        assert proc.returncode == 1, err[-2000:]
        assert ("no space left" in err or "disk is full" in err) and str(root) in err, err[-2000:]
        assert "Traceback" not in err, err[-3000:]
        recorded = _units(root, "verified") | _units(root, "extracted")
        assert recorded, "some classes were done before the disk filled"
        on_disk = tree_digest(root / "train")
        for unit in _units(root, "verified"):
            assert class_tree(on_disk, unit) == class_tree(ref, unit)
        filler.unlink()
        assert cli.main(["apply", str(m)]) == 0
        assert tree_digest(root / "train") == ref


def _wait_for_extracted(root: Path, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, "apply ended before the disk could be filled: grow the data set"
        if _units(root, "extracted") | _units(root, "verified"):
            return
        time.sleep(0.02)
    raise AssertionError("no class was extracted within 60 s")


def _units(root: Path, state: str) -> set[str]:
    return journal_units(root, state)


def _fill(path: Path) -> None:
    chunk = b"\0" * (1 << 16)
    # Unbuffered: a buffered writer keeps the bytes a short write left over
    # and raises ENOSPC again from close(), outside the except below.
    with path.open("wb", buffering=0) as f:
        try:
            while True:
                f.write(chunk)
        except OSError as e:
            assert e.errno == errno.ENOSPC


def test_disk_filled_during_a_download_keeps_the_part_and_resumes(tmp_path: Path) -> None:
    from http_server import FaultServer

    data = os.urandom(3 << 20)
    with tmpfs(tmp_path / "fs", "6m") as root, FaultServer(files={"/big.bin": data}) as server:
        server.throttle("/big.bin", 1 << 20)
        m = write_manifest(tmp_path / "m.toml", root, f"""
[components.big]
source = "http"
url = "{server.url('/big.bin')}"
file = "downloads/big.bin"
size = {len(data)}
sha256 = "{sha256(data)}"
""")
        proc = subprocess.Popen([*datasetd_cmd(), "--log-format", "json", "apply", str(m)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        part = root / "downloads/big.bin.part"
        deadline = time.monotonic() + 30
        while not (part.exists() and part.stat().st_blocks > 0):
            assert proc.poll() is None and time.monotonic() < deadline, "the download never started"
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGSTOP)
        filler = root / "someone-elses-file"
        _fill(filler)
        os.killpg(proc.pid, signal.SIGCONT)
        _out, err = proc.communicate(timeout=120)
        assert proc.returncode == 1, err[-2000:]
        assert "Traceback" not in err and str(root) in err.splitlines()[-1], err[-2000:]
        assert part.exists() and not (root / "downloads/big.bin").exists()
        filler.unlink()
        server.throttle("/big.bin", None)
        assert cli.main(["apply", str(m)]) == 0
        assert (root / "downloads/big.bin").read_bytes() == data
        # The .part is preallocated, so the download itself cannot hit ENOSPC half way; whatever
        # failed first (the journal, the status), no byte was fetched twice.
        sent = sum(r.sent for r in server.requests("/big.bin", "GET"))
        assert sent <= len(data) * 1.05, f"{sent} bytes sent for a {len(data)}-byte file: the part was not kept"
