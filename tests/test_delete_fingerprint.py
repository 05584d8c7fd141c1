"""The cheap proof before a delete (issue 12): (inode, size, ctime_ns) of every file, kept at verification.

An untouched folder lets its class tar or archive go without a byte of it being read: the kernel's
inotify (tests/inotify_reads.py) sees no file in it opened. One byte changed with the same size and
the mtime put back moves ctime, so the fingerprint fails, the folder is re-hashed, and the tar is
kept and the folder repaired from it. Units recorded by an older journal generation have no
fingerprint and are re-hashed, as before.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from conftest import WNIDS, Dataset, class_tree, gnu_tar_extract, gnu_tar_reference, tree_digest
from datasetd import cli
from datasetd.demo import build_val
from datasetd.state import journal as journal_mod
from http_server import FaultServer
from inotify_reads import FileReads
from test_http_apply import http_manifest
from test_reprove_before_delete import _corrupt_same_size_same_mtime, _unpinned_train, _write, _z_tar_back

UNIT = WNIDS[2]


def _unit_steps(dataset: Dataset, before: int) -> list[tuple[str, str]]:
    return [(a, o) for _c, u, a, o in dataset.steps()[before:] if u == UNIT]


def test_an_untouched_folder_lets_its_class_tar_go_without_reading_a_file(dataset: Dataset, tmp_path: Path) -> None:
    _unpinned_train(dataset)
    assert dataset.run("apply") == 0
    z_tar = _z_tar_back(dataset, tmp_path)
    folder = dataset.root / "train" / UNIT
    before = len(dataset.steps())
    with FileReads(folder) as reads:
        assert dataset.run("apply") == 0
    assert _unit_steps(dataset, before) == [("DeleteClassTar", "ok")]
    assert not z_tar.exists()
    assert reads.opened == set() and reads.read == set(), f"the delete read {sorted(reads.opened)[:3]}"


def test_a_same_size_same_mtime_change_moves_ctime_so_the_folder_is_rehashed(dataset: Dataset, tmp_path: Path) -> None:
    _unpinned_train(dataset)
    assert dataset.run("apply") == 0
    z_tar = _z_tar_back(dataset, tmp_path)
    folder = dataset.root / "train" / UNIT
    victim = sorted(folder.glob("*.JPEG"))[0]
    _corrupt_same_size_same_mtime(victim)
    before = len(dataset.steps())
    with FileReads(folder) as reads:
        assert dataset.run("apply") == 0
    steps = _unit_steps(dataset, before)
    assert steps[0] == ("DeleteClassTar", "mismatch"), steps  # the tar was kept ...
    assert any(a in ("AdoptUnit", "ExtractUnit") for a, _o in steps), steps  # ... the folder repaired ...
    assert steps[-1] == ("DeleteClassTar", "ok"), steps  # ... and only then the tar went
    assert victim.name in reads.read, "the changed file was re-hashed"
    assert not z_tar.exists()
    reference = gnu_tar_reference(dataset.train_tar, tmp_path / "gnu")
    assert tree_digest(folder) == class_tree(reference, UNIT)


def test_a_unit_without_fingerprint_is_rehashed_before_its_tar_goes(dataset: Dataset, tmp_path: Path) -> None:
    """As recorded by a journal of generation 2: no stats row, so the delete falls back to reading."""
    _unpinned_train(dataset)
    assert dataset.run("apply") == 0
    with dataset.journal() as db:
        assert db.execute("DELETE FROM unit_stats WHERE unit=?", (UNIT,)).rowcount == 1
    z_tar = _z_tar_back(dataset, tmp_path)
    folder = dataset.root / "train" / UNIT
    before = len(dataset.steps())
    with FileReads(folder) as reads:
        assert dataset.run("apply") == 0
    assert _unit_steps(dataset, before) == [("DeleteClassTar", "ok")]
    assert reads.read == {p.name for p in folder.iterdir()}, "every file re-hashed"
    assert not z_tar.exists()


def test_a_clean_deep_verify_gives_a_unit_without_fingerprint_one(dataset: Dataset, tmp_path: Path) -> None:
    _unpinned_train(dataset)
    assert dataset.run("apply") == 0
    with dataset.journal() as db:
        db.execute("DELETE FROM unit_stats WHERE unit=?", (UNIT,))
    assert dataset.run("verify") == 0
    z_tar = _z_tar_back(dataset, tmp_path)
    with FileReads(dataset.root / "train" / UNIT) as reads:
        assert dataset.run("apply") == 0
    assert not z_tar.exists()
    assert reads.opened == set(), "proved by the fingerprint the verify took"


def test_keep_archive_switched_off_on_an_untouched_tree_deletes_without_reading(tmp_path: Path) -> None:
    val, _ = build_val(WNIDS)
    root = tmp_path / "root"
    with FaultServer(files={"/val.tar": val}) as server:
        assert cli.main(["apply", str(http_manifest(tmp_path, server.url("/val.tar"), val, keep=True))]) == 0
        dropped = http_manifest(tmp_path, server.url("/val.tar"), val, keep=False)
        with FileReads(root / "val") as reads:
            assert cli.main(["apply", str(dropped)]) == 0
    assert not (root / "downloads/val.tar").exists()
    assert reads.opened == set(), f"the delete read {sorted(reads.opened)[:3]}"


def test_keep_archive_switched_off_after_a_touch_free_change_rehashes_and_repairs(tmp_path: Path) -> None:
    val, _ = build_val(WNIDS)
    root = tmp_path / "root"
    with FaultServer(files={"/val.tar": val}) as server:
        assert cli.main(["apply", str(http_manifest(tmp_path, server.url("/val.tar"), val, keep=True))]) == 0
        victim = sorted((root / "val").rglob("*.JPEG"))[3]
        _corrupt_same_size_same_mtime(victim)
        dropped = http_manifest(tmp_path, server.url("/val.tar"), val, keep=False)
        with FileReads(root / "val") as reads:
            assert cli.main(["apply", str(dropped)]) == 0
    assert str(victim.relative_to(root / "val")) in reads.read
    reference = tree_digest(gnu_tar_extract(_write(tmp_path / "v.tar", val), tmp_path / "ref"))
    assert tree_digest(root / "val") == reference
    assert not (root / "downloads/val.tar").exists()


def test_a_generation_2_journal_is_upgraded_in_place_and_keeps_its_rows(tmp_path: Path) -> None:
    """Written as generation 2 wrote it (its own migrations, in order), then opened by this datasetd."""
    state = tmp_path / ".datasetd"
    state.mkdir()
    path = state / journal_mod.JOURNAL_NAME
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    for generation, script in enumerate(journal_mod._MIGRATIONS[:2]):
        db.executescript(f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version={generation + 1};\nCOMMIT;")
    db.execute("INSERT INTO unit VALUES ('train', ?, 'abc', 'verified', 1, 5, 0)", (UNIT,))
    db.execute("INSERT INTO file VALUES ('train', ?, 'a.JPEG', 5, 'deadbeef')", (UNIT,))
    db.execute("INSERT INTO unit_dirs VALUES ('train', ?, '[]')", (UNIT,))
    db.close()
    inode = path.stat().st_ino

    journal = journal_mod.JournalDB(state)
    try:
        assert journal.db.execute("PRAGMA user_version").fetchone()[0] == journal_mod.GENERATION == 3
        assert path.stat().st_ino == inode, "upgraded in place, not rebuilt"
        assert journal.units("train")[UNIT].state.value == "verified"
        assert journal.files("train", UNIT) == [("a.JPEG", 5, "deadbeef")]
        assert journal.units("train")[UNIT].dirs == "[]"
        assert journal.file_stats("train", UNIT) is None  # an old unit: its delete re-hashes
        journal.record_stats("train", UNIT, b"\x01")
        assert journal.file_stats("train", UNIT) == b"\x01"
    finally:
        journal.close()
