"""`verify` answers for the manifest, not for the journal: no false "clean".

Real tampering: an archive touched or appended to, a lost journal, a deleted class folder, a file changed
with the same size and mtime, a class folder replaced by a symlink to a perfect copy.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import WNIDS, Dataset, journal_units


def _corrupt_same_size_same_mtime(path: Path) -> None:
    st = path.stat()
    data = path.read_bytes()
    path.write_bytes(bytes([data[0] ^ 1]) + data[1:])
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _touch(archive: Path) -> None:
    st = archive.stat()
    os.utime(archive, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


def _append(archive: Path) -> None:
    with archive.open("ab") as f:
        f.write(b"\0" * 10240)


def _lose_journal(archive: Path) -> None:
    for p in (archive.parents[1] / ".datasetd").glob("journal.sqlite*"):
        p.unlink()


def test_a_root_never_applied_is_not_clean(dataset: Dataset, capsys: pytest.CaptureFixture[str]) -> None:
    assert dataset.run("verify") == 1
    out = capsys.readouterr().out
    assert "train.tar: not matched to an index" in out and "val.tar: not matched to an index" in out


@pytest.mark.parametrize("change", [_touch, _append, _lose_journal], ids=["archive-touched", "archive-appended",
                                                                           "journal-lost"])
def test_a_deleted_folder_and_a_corrupted_file_are_found_whatever_happened_to_the_archive(
        dataset: Dataset, capsys: pytest.CaptureFixture[str], change: Callable[[Path], None]) -> None:
    assert dataset.run("apply") == 0
    shutil.rmtree(dataset.root / "train" / WNIDS[1])
    victim = sorted((dataset.root / "train" / WNIDS[3]).glob("*.JPEG"))[0]
    _corrupt_same_size_same_mtime(victim)
    change(dataset.train_tar)
    capsys.readouterr()
    assert dataset.run("verify") == 1
    out = capsys.readouterr().out
    assert "verify: every" not in out
    assert "train.tar: not matched to an index" in out
    if change is not _lose_journal:  # the journal still knows these units: they are re-hashed anyway
        assert f"{dataset.root / 'train' / WNIDS[1]}: missing" in out
        assert f"{victim}: sha256" in out


def test_a_unit_never_extracted_is_reported(dataset: Dataset, capsys: pytest.CaptureFixture[str]) -> None:
    assert dataset.run("apply") == 0
    db = dataset.journal()
    with db:
        db.execute("DELETE FROM unit WHERE unit=?", (WNIDS[4],))
        db.execute("DELETE FROM file WHERE unit=?", (WNIDS[4],))
    db.close()
    shutil.rmtree(dataset.root / "train" / WNIDS[4])
    capsys.readouterr()
    assert dataset.run("verify") == 1
    assert f"{dataset.root / 'train' / WNIDS[4]}: missing (never extracted)" in capsys.readouterr().out


def test_verify_without_repair_keeps_the_records_of_what_it_found_bad(
        dataset: Dataset, capsys: pytest.CaptureFixture[str]) -> None:
    assert dataset.run("apply") == 0
    victim = sorted((dataset.root / "train" / WNIDS[2]).glob("*.JPEG"))[0]
    _corrupt_same_size_same_mtime(victim)
    assert dataset.run("verify") == 1
    assert WNIDS[2] in journal_units(dataset.root, "verified", "train"), "verify without --repair forgot a unit"
    capsys.readouterr()
    assert dataset.run("verify") == 1, "the second verify must still see the mismatch"
    assert f"{victim}: sha256" in capsys.readouterr().out
    assert dataset.run("verify", "--repair") == 0
    assert dataset.run("verify") == 0


def test_a_symlinked_class_folder_is_not_clean(dataset: Dataset, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert dataset.run("apply") == 0
    folder = dataset.root / "train" / WNIDS[0]
    copy = tmp_path / "elsewhere"
    shutil.copytree(folder, copy)
    shutil.rmtree(folder)
    folder.symlink_to(copy)
    capsys.readouterr()
    assert dataset.run("verify") == 1
    assert f"{folder}: a symlink" in capsys.readouterr().out
