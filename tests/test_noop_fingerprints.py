"""The no-op apply checks one stat per directory, not per file, and still sees every member-set change.

Real trees extracted by apply, real directory stamps (inode, mtime, ctime) in the journal; the
tampering is done the way a user would: delete, add, rename, in nested directories too.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import pytest

from conftest import WNIDS, Dataset, make_tar, sha256, tree_digest, write_manifest


def _fingerprinted(root: Path) -> dict[str, bool]:
    with sqlite3.connect(root / ".datasetd" / "journal.sqlite") as db:
        return {f"{c}/{u}": d is not None for c, u, d in db.execute(
            "SELECT u.component, u.unit, d.dirs FROM unit u LEFT JOIN unit_dirs d USING (component, unit)")}


def _converge_twice(dataset: Dataset) -> list[tuple[str, str, str, str]]:
    assert dataset.run("apply") == 0
    time.sleep(1.2)  # let every directory stamp age past the racy window
    assert dataset.run("apply") == 0  # a no-op; keeps the fingerprints it could not keep while writing
    return dataset.steps()


def _extracted_again(dataset: Dataset, before: list[tuple[str, str, str, str]]) -> set[str]:
    return {u for c, u, a, o in dataset.steps()[len(before):] if a in ("ExtractUnit", "AdoptUnit")}


def test_every_unit_of_a_converged_tree_keeps_a_fingerprint(dataset: Dataset) -> None:
    _converge_twice(dataset)
    marks = _fingerprinted(dataset.root)
    assert marks and all(marks.values()), marks


def test_units_read_back_while_extracted_keep_their_stamps_from_the_first_apply(dataset: Dataset) -> None:
    """Taken by the worker right after the read-back, settled on the stamp clock: no walk of the
    whole tree at the end of the apply, and the very next no-op is a stat per directory."""
    assert dataset.run("apply") == 0  # the last class was written a moment ago: no 1 s wait
    train = {unit: kept for unit, kept in _fingerprinted(dataset.root).items() if unit.startswith("train/")}
    assert train and all(train.values()), train


@pytest.mark.parametrize("change", ["delete", "add", "rename"])
def test_a_member_set_change_is_seen_by_the_next_apply(dataset: Dataset, change: str) -> None:
    before = _converge_twice(dataset)
    folder = dataset.root / "train" / WNIDS[3]
    reference = tree_digest(folder)
    victim = sorted(folder.iterdir())[0]
    if change == "delete":
        victim.unlink()
    elif change == "add":
        (folder / "extra.JPEG").write_bytes(b"not from the tar")
    else:
        victim.rename(folder / "renamed.JPEG")
    assert dataset.run("apply") == 0
    assert _extracted_again(dataset, before) == {WNIDS[3]}
    assert tree_digest(folder) == reference


def test_a_change_deep_inside_a_nested_tree_is_seen(tmp_path: Path) -> None:
    data = make_tar([("a/b/c/x.bin", b"x" * 100), ("a/y.bin", b"y" * 10), ("z.bin", b"z")])
    root = tmp_path / "root"
    root.mkdir()
    (root / "nested.tar").write_bytes(data)
    manifest = write_manifest(tmp_path / "m.toml", root, f"""
[components.nested]
source = "file"
path = "nested.tar"
sha256 = "{sha256(data)}"
unpack = "tar"
into = "nested"
""")
    ds = Dataset(root, manifest, root / "nested.tar", root / "nested.tar", data, data)
    before = _converge_twice(ds)
    assert all(_fingerprinted(root).values())
    (root / "nested" / "a" / "b" / "c" / "added.bin").write_bytes(b"!")
    assert ds.run("apply") == 0
    assert _extracted_again(ds, before) == {"."}
    assert not (root / "nested" / "a" / "b" / "c" / "added.bin").exists()


def test_a_size_changed_in_place_is_left_to_deep_verification(dataset: Dataset) -> None:
    """The trade-off of the fast path, stated: a truncation inside a file moves no directory stamp,
    so the no-op apply trusts the fingerprint; `verify` re-reads every byte and finds it."""
    before = _converge_twice(dataset)
    victim = sorted((dataset.root / "train" / WNIDS[1]).iterdir())[0]
    os.truncate(victim, 1)
    assert dataset.run("apply") == 0
    assert _extracted_again(dataset, before) == set()  # the fast path did not list this class
    assert dataset.run("verify") == 1
