"""The fingerprint's clock rule ("racy git"): a file is vouched for by its ctime only when the stat
that recorded it followed a reading of the stamp clock past that ctime (state/filestats.py).

Real files on the test's filesystem; the blobs that test the trust rule are built from real lstat
values with only `taken_ns` chosen, so each side of the rule is seen."""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import pytest

from datasetd import platform
from datasetd.state import filestats, fswalk


@pytest.fixture(autouse=True)
def _clock_rule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests are about the clock rule: the filesystem is taken as one whose stamps a change in
    the tick of a stat can keep, whatever this kernel does (test_fingerprint_every_change.py has the
    other kind)."""
    monkeypatch.setitem(platform._EVERY_CHANGE_STAMPED, os.stat(tmp_path).st_dev, False)


def _unit(tmp_path: Path, files: int = 30) -> tuple[Path, list[tuple[str, int, str]]]:
    folder = tmp_path / "n01440764"
    folder.mkdir()
    records = []
    for i in range(files):
        (folder / f"f{i:03}.JPEG").write_bytes(b"x" * i)
        records.append((f"f{i:03}.JPEG", i, ""))
    return folder, records


def _blob(folder: Path, records: list[tuple[str, int, str]], version: int, taken_ns: int) -> bytes:
    names = sorted(n for n, _s, _d in records)
    body = b""
    for n in names:
        st = os.lstat(folder / n)
        body += filestats._ENTRY.pack(st.st_ino, st.st_size, st.st_ctime_ns)
    return zlib.compress(filestats._HEAD.pack(version, taken_ns, len(names)) + body)


def test_a_folder_fingerprinted_right_after_its_writes_is_stat_ed_past_every_ctime(tmp_path: Path) -> None:
    folder, records = _unit(tmp_path)
    blob = filestats.take(folder, records)  # the last file was written microseconds ago
    assert blob is not None
    fp = filestats.decode(blob)
    assert fp is not None and fp.version == 2
    assert all(ctime < fp.taken_ns for _ino, _size, ctime in fp.stats)  # settled: nothing fresh is kept
    assert fp.taken_ns <= platform.stamp_clock_ns()
    assert filestats.unchanged(folder, records, blob)


def test_a_file_stamped_at_or_after_the_clock_reading_is_not_trusted(tmp_path: Path) -> None:
    folder, records = _unit(tmp_path, files=3)
    newest = max(os.lstat(folder / n).st_ctime_ns for n, _s, _d in records)
    assert newest % 1_000_000_000  # a fine-stamped filesystem (ext4, tmpfs, xfs, btrfs)
    assert not filestats.unchanged(folder, records, _blob(folder, records, 2, newest))
    assert filestats.unchanged(folder, records, _blob(folder, records, 2, newest + 1))


def test_a_version_1_blob_keeps_its_20_ms_rule(tmp_path: Path) -> None:
    folder, records = _unit(tmp_path, files=3)
    newest = max(os.lstat(folder / n).st_ctime_ns for n, _s, _d in records)
    assert not filestats.unchanged(folder, records, _blob(folder, records, 1, newest + 10_000_000))
    assert filestats.unchanged(folder, records, _blob(folder, records, 1, newest + 20_000_000))


def test_a_file_changed_after_the_fingerprint_is_seen_even_within_the_same_tick(tmp_path: Path) -> None:
    folder, records = _unit(tmp_path)
    blob = filestats.take(folder, records)
    target = folder / "f010.JPEG"
    st = os.lstat(target)
    target.write_bytes(b"y" * 10)  # same size, mtime put back: only ctime tells
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert not filestats.unchanged(folder, records, blob)


# ---- directory stamps taken with the file fingerprint (what a no-op checks, a stat per directory) --


def test_directory_stamps_taken_right_after_the_writes_settle_past_the_clock(tmp_path: Path) -> None:
    folder, records = _unit(tmp_path)
    (folder / "sub").mkdir()
    (folder / "sub" / "a.JPEG").write_bytes(b"a")
    records.append(("sub/a.JPEG", 1, ""))
    _blob_taken, dirs = filestats.take_with_dirs(folder, records)  # the folder changed microseconds ago
    assert dirs is not None
    assert fswalk.unchanged_since(folder, dirs)
    (folder / "sub" / "b.JPEG").write_bytes(b"b")  # an entry added after: the stamp moved past the record
    assert not fswalk.unchanged_since(folder, dirs)


def test_an_entry_added_in_the_tick_of_the_walk_withdraws_the_directory_stamps(tmp_path: Path) -> None:
    """A walk whose directory stamp is in the clock's current tick, then an entry added in that tick:
    on a filesystem with coarse stamps the directory keeps its stamp, so only listing it again once
    the clock has ticked sees the entry. (Kernels with multigrain stamps move it anyway, so the walk
    is given the directory's stamp as it is after the add, with the clock reading just before it.)"""
    folder, _records = _unit(tmp_path, files=2)
    stats = filestats.stat_tree(folder)
    (folder / "late.JPEG").write_bytes(b"x")
    st = os.lstat(folder)
    stats.stamps = [("", st.st_ino, st.st_mtime_ns, st.st_ctime_ns)]
    stats.taken_ns = max(st.st_mtime_ns, st.st_ctime_ns)
    settled = filestats._settle(folder, stats)
    assert settled is not None and not settled.stamps_ok  # else its stamp would vouch for a listing without late.JPEG
