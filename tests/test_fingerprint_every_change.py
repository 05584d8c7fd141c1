"""Filesystems that stamp every change made after a stat (Linux's multigrain timestamps, 6.13 and
later: ext4, xfs, btrfs, tmpfs): there a unit's fingerprint is final at its first stat, with no
wait for the stamp clock to tick (state/filestats.py, platform.stamps_every_change).

The probe runs for real on the test's filesystem (skipped on a kernel without multigrain stamps)
and, as root, on ext2, whose own driver stamps from the coarse clock alone: there a change in the
tick of a stat keeps the stamp, so the probe must say no and the fingerprint must wait for the clock."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from conftest import Dataset
from datasetd import platform
from datasetd.state import filestats, fswalk

T = TypeVar("T")
COARSE = 5  # CLOCK_REALTIME_COARSE, the clock the kernel stamps files from


def _unit(parent: Path, files: int = 30) -> tuple[Path, list[tuple[str, int, str]]]:
    folder = parent / "n01440764"
    (folder / "sub").mkdir(parents=True)
    records = [("sub/a.JPEG", 1, "")]
    (folder / "sub" / "a.JPEG").write_bytes(b"a")
    for i in range(files):
        (folder / f"f{i:03}.JPEG").write_bytes(b"x" * i)
        records.append((f"f{i:03}.JPEG", i, ""))
    return folder, records


def _in_one_tick(action: Callable[[], T]) -> T:
    """`action`, done again until the stamp clock reads the same before and after it."""
    for _ in range(200):
        tick = time.clock_gettime_ns(COARSE)
        result = action()
        if time.clock_gettime_ns(COARSE) == tick:
            return result
    pytest.fail("the stamp clock ticked during every try")


@pytest.fixture
def every_change_stamped(tmp_path: Path) -> Path:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    if not platform.stamps_every_change(scratch):
        pytest.skip("this kernel or filesystem keeps a stamp through a change in the tick of a stat")
    assert list(scratch.iterdir()) == []  # the probe took its file and directory away
    return tmp_path


def test_a_change_in_the_tick_of_the_fingerprint_is_seen_without_waiting(every_change_stamped: Path) -> None:
    folder, records = _unit(every_change_stamped)
    target = folder / "f010.JPEG"

    def fingerprint_then_change() -> bytes | None:
        blob = filestats.take(folder, records)
        st = os.lstat(target)
        target.write_bytes(b"y" * 10)  # same size, mtime put back: only ctime tells
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
        return blob

    blob = _in_one_tick(fingerprint_then_change)
    assert blob is not None
    fp = filestats.decode(blob)
    assert fp is not None and fp.version == 3  # taken at the first stat, nothing stat'ed again
    assert not filestats.unchanged(folder, records, blob)


def test_an_unchanged_unit_is_trusted_even_with_stamps_in_the_tick_of_its_stat(every_change_stamped: Path) -> None:
    folder, records = _unit(every_change_stamped)
    blob = _in_one_tick(lambda: filestats.take(folder, records))
    assert blob is not None
    fp = filestats.decode(blob)
    assert fp is not None and any(ctime >= fp.taken_ns for _ino, _size, ctime in fp.stats)  # no wait
    assert filestats.unchanged(folder, records, blob)


def test_an_entry_added_in_the_tick_of_the_walk_moves_the_directory_stamp(every_change_stamped: Path) -> None:
    folder, records = _unit(every_change_stamped)

    def walk_then_add() -> str | None:  # done again when the clock ticked: the late entry goes first
        (folder / "sub" / "late.JPEG").unlink(missing_ok=True)
        _blob, dirs = filestats.take_with_dirs(folder, records)
        (folder / "sub" / "late.JPEG").write_bytes(b"x")
        return dirs

    dirs = _in_one_tick(walk_then_add)
    assert dirs is not None  # kept at once, no second listing
    assert not fswalk.unchanged_since(folder, dirs)


def test_an_apply_fingerprints_every_unit_at_its_first_stat(dataset: Dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker probes the filesystem in each unit's fresh .partial folder, so the fingerprint
    after the read-back needs no second stat; the probe leaves nothing in the tree."""
    if not platform.stamps_every_change(dataset.root):
        pytest.skip("this kernel or filesystem keeps a stamp through a change in the tick of a stat")
    monkeypatch.setattr(platform, "_EVERY_CHANGE_STAMPED", {})  # the apply's workers probe for themselves
    assert dataset.run("apply") == 0
    with sqlite3.connect(dataset.root / ".datasetd" / "journal.sqlite") as db:
        blobs = [b for (b,) in db.execute("SELECT s.stats FROM unit_stats s WHERE s.component = 'train'")]
    versions = {fp.version for fp in map(filestats.decode, blobs) if fp is not None}
    assert blobs and versions == {3}, versions
    assert not [p for p in dataset.root.rglob("*") if ".stamp-probe" in p.name]


# ---- a filesystem without multigrain stamps -----------------------------------------------------

TOOLS = ("losetup", "mkfs.ext2", "mount", "umount")


@pytest.fixture
def ext2(tmp_path: Path) -> Iterator[Path]:
    image, at = tmp_path / "ext2.img", tmp_path / "mnt"
    at.mkdir()
    with image.open("wb") as f:
        f.truncate(16 << 20)
    subprocess.run(["mkfs.ext2", "-q", "-F", str(image)], check=True)
    mounted = subprocess.run(["mount", "-t", "ext2", "-o", "loop", str(image), str(at)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount ext2 here: {mounted.stderr.strip()}")
    try:
        yield at
    finally:
        subprocess.run(["umount", str(at)], check=True)


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="losetup and mount need root (CI runs as root)")
@pytest.mark.skipif(any(shutil.which(t) is None for t in TOOLS), reason=f"needs {', '.join(TOOLS)}")
def test_the_probe_says_what_a_change_in_the_tick_of_a_stat_does_on_ext2(ext2: Path) -> None:
    """ext2 (its own driver, or ext4's serving it) is where a kernel may keep a stamp through a
    same-tick change; whichever it does, the probe must say the same, and where the stamp is kept
    the fingerprint must wait for the clock."""
    scratch = ext2 / "scratch"
    scratch.mkdir()
    target = scratch / "f"
    target.write_bytes(b"x")

    def stat_then_change() -> tuple[int, int]:
        before = os.lstat(target).st_ctime_ns
        target.write_bytes(b"y")
        return before, os.lstat(target).st_ctime_ns

    before, after = _in_one_tick(stat_then_change)
    target.unlink()
    kept = before == after  # then trusting the first stat would miss this change
    assert platform.stamps_every_change(scratch) is not kept
    assert list(scratch.iterdir()) == []
    if kept:
        folder, records = _unit(ext2)
        blob = filestats.take(folder, records)
        assert blob is not None
        fp = filestats.decode(blob)
        assert fp is not None and fp.version == 2
        assert all(ctime < fp.taken_ns for _ino, _size, ctime in fp.stats)  # waited for the clock
