"""Re-prove right before every delete: a class tar or a downloaded archive is the last good copy.

Real tampering: one byte of a verified folder changed, same size, mtime put back with os.utime, so
names, sizes and mtimes all still match the record. The tar (or archive) must survive until the folder
is repaired from it; an untouched tree still deletes.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from conftest import WNIDS, Dataset, class_tree, gnu_tar_extract, gnu_tar_reference, tree_digest
from datasetd import cli
from datasetd.demo import build_val
from http_server import FaultServer
from test_http_apply import http_manifest

UNIT = WNIDS[2]


def _corrupt_same_size_same_mtime(path: Path) -> None:
    st = path.stat()
    data = path.read_bytes()
    path.write_bytes(bytes([data[0] ^ 1]) + data[1:])
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _unpinned_train(dataset: Dataset) -> None:
    """Without a pin every unit's range is hashed at index, so a loose Z_ tar can be matched (and deleted)."""
    lines = dataset.manifest.read_text().splitlines()
    train_pin = next(i for i, line in enumerate(lines) if line.startswith("sha256 ="))
    dataset.manifest.write_text("\n".join(lines[:train_pin] + lines[train_pin + 1:]) + "\n")


def _z_tar_back(dataset: Dataset, tmp_path: Path) -> Path:
    """The state a kill between the VERIFIED commit and the tar's unlink leaves: Z_W.tar beside W/."""
    split = gnu_tar_extract(dataset.train_tar, tmp_path / "split")
    z_tar = dataset.root / "train" / f"Z_{UNIT}.tar"
    shutil.copyfile(split / f"{UNIT}.tar", z_tar)
    return z_tar


def _outcomes(dataset: Dataset, action: str) -> list[str]:
    return [outcome for _c, _u, a, outcome in dataset.steps() if a == action]


def test_a_class_tar_outlives_a_same_size_change_and_repairs_the_folder(dataset: Dataset, tmp_path: Path) -> None:
    _unpinned_train(dataset)
    assert dataset.run("apply") == 0
    z_tar = _z_tar_back(dataset, tmp_path)
    victim = sorted((dataset.root / "train" / UNIT).glob("*.JPEG"))[0]
    _corrupt_same_size_same_mtime(victim)
    before = len(dataset.steps())
    assert dataset.run("apply") == 0
    steps = [(a, o) for _c, u, a, o in dataset.steps()[before:] if u == UNIT]
    # the delete was refused first, the folder repaired from the kept tar, and only then the tar went
    assert steps[0] == ("DeleteClassTar", "mismatch"), steps
    assert steps[-1] == ("DeleteClassTar", "ok"), steps
    assert any(a in ("AdoptUnit", "ExtractUnit") for a, _o in steps), steps
    assert not z_tar.exists()
    reference = gnu_tar_reference(dataset.train_tar, tmp_path / "gnu")
    assert tree_digest(dataset.root / "train" / UNIT) == class_tree(reference, UNIT)


def test_an_untouched_folder_still_lets_its_class_tar_go(dataset: Dataset, tmp_path: Path) -> None:
    _unpinned_train(dataset)
    assert dataset.run("apply") == 0
    z_tar = _z_tar_back(dataset, tmp_path)
    before = len(dataset.steps())
    assert dataset.run("apply") == 0
    steps = [(a, o) for _c, u, a, o in dataset.steps()[before:] if u == UNIT]
    assert steps == [("DeleteClassTar", "ok")], "no re-extraction of a folder that matches"
    assert not z_tar.exists()


def test_keep_archive_switched_off_after_a_same_size_change_repairs_before_deleting(tmp_path: Path) -> None:
    val, _ = build_val(WNIDS)
    reference = tree_digest(gnu_tar_extract(_write(tmp_path / "v.tar", val), tmp_path / "ref"))
    root = tmp_path / "root"
    with FaultServer(files={"/val.tar": val}) as server:
        kept = http_manifest(tmp_path, server.url("/val.tar"), val, keep=True)
        assert cli.main(["apply", str(kept)]) == 0
        assert (root / "downloads/val.tar").exists()
        _corrupt_same_size_same_mtime(sorted((root / "val").rglob("*.JPEG"))[3])
        dropped = http_manifest(tmp_path, server.url("/val.tar"), val, keep=False)
        assert cli.main(["apply", str(dropped)]) == 0
    with_db = Dataset(root, dropped, root / "downloads/val.tar", root / "downloads/val.tar", val, val)
    outcomes = _outcomes(with_db, "DeleteArchive")
    # refused while the folder differed (the executor then notes its retry), deleted once it was repaired
    assert outcomes[0] == "mismatch" and outcomes[-1] == "ok", outcomes
    repaired = [i for i, (_c, _u, a, o) in enumerate(with_db.steps()) if a in ("AdoptUnit", "ExtractUnit")]
    refused = [i for i, (_c, _u, a, o) in enumerate(with_db.steps()) if a == "DeleteArchive"]
    assert refused[0] < repaired[-1] < refused[-1], "the folder is repaired between the refusal and the delete"
    assert tree_digest(root / "val") == reference
    assert not (root / "downloads/val.tar").exists()


def test_keep_archive_switched_off_on_an_untouched_tree_deletes_at_once(tmp_path: Path) -> None:
    val, _ = build_val(WNIDS)
    root = tmp_path / "root"
    with FaultServer(files={"/val.tar": val}) as server:
        assert cli.main(["apply", str(http_manifest(tmp_path, server.url("/val.tar"), val, keep=True))]) == 0
        dropped = http_manifest(tmp_path, server.url("/val.tar"), val, keep=False)
        assert cli.main(["apply", str(dropped)]) == 0
    with_db = Dataset(root, dropped, root / "downloads/val.tar", root / "downloads/val.tar", val, val)
    assert _outcomes(with_db, "DeleteArchive") == ["ok"]
    assert not (root / "downloads/val.tar").exists()


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
