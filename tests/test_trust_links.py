"""Resolve, don't compare strings: no write, rename or delete through a symlink.

Real symlinks where datasetd expects its own directories (`into`, `.datasetd`), pointing at a user's
directory that holds a folder named like a class; a symlinked root, which is allowed.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import WNIDS, Dataset, gnu_tar_reference, run_datasetd, tree_digest


def _users_dir(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """Somebody's own files, one folder named exactly like a class datasetd will extract."""
    user = tmp_path / "home-user"
    (user / WNIDS[0]).mkdir(parents=True)
    (user / WNIDS[0] / "thesis.tex").write_text("three years of work")
    (user / "notes.txt").write_text("keep me")
    return user, tree_digest(user)


def _refused_one_line(dataset: Dataset, verb: str, link: Path) -> None:
    result = run_datasetd(verb, str(dataset.manifest))
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if not line.startswith("{")]
    assert errors and all(f"{link}: a symlink" in line for line in errors), result.stderr
    assert len(errors) == 1 or verb == "apply", result.stderr


@pytest.mark.parametrize("when", ["before-the-first-apply", "after-convergence"])
def test_a_symlinked_into_is_refused_and_the_users_directory_is_untouched(
        dataset: Dataset, tmp_path: Path, when: str) -> None:
    into = dataset.root / "train"
    if when == "after-convergence":
        assert dataset.run("apply") == 0
        shutil.rmtree(into)
    user, before = _users_dir(tmp_path)
    into.symlink_to(user)
    _refused_one_line(dataset, "apply", into)
    _refused_one_line(dataset, "plan", into)
    assert tree_digest(user) == before, "datasetd wrote, renamed or removed through the link"
    assert sorted(p.name for p in user.iterdir()) == sorted([WNIDS[0], "notes.txt"])
    into.unlink()
    assert dataset.run("apply") == 0  # the link gone, the tree converges under root
    assert tree_digest(into) == gnu_tar_reference(dataset.train_tar, tmp_path / "gnu")
    assert tree_digest(user) == before


def test_a_symlinked_state_dir_is_refused_before_anything_is_written(dataset: Dataset, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (dataset.root / ".datasetd").symlink_to(elsewhere)
    for verb in ("apply", "verify"):
        result = run_datasetd(verb, str(dataset.manifest))
        assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
        assert f"{dataset.root / '.datasetd'}: a symlink" in result.stderr
    assert list(elsewhere.iterdir()) == [], "state was written outside root"
    assert not (dataset.root / "train").exists()


def test_a_symlinked_digest_list_dir_is_refused(dataset: Dataset, tmp_path: Path) -> None:
    assert dataset.run("apply") == 0
    lists = dataset.root / ".datasetd/sha256/train"
    shutil.rmtree(lists)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    lists.symlink_to(elsewhere)
    assert dataset.run("apply") != 0
    assert list(elsewhere.iterdir()) == []


def test_root_itself_may_be_a_symlink(dataset: Dataset, tmp_path: Path) -> None:
    link = tmp_path / "data-link"
    link.symlink_to(dataset.root)
    dataset.manifest.write_text(dataset.manifest.read_text().replace(f'root = "{dataset.root}"',
                                                                     f'root = "{link}"'))
    result = run_datasetd("apply", str(dataset.manifest))
    assert result.returncode == 0, result.stderr
    assert tree_digest(dataset.root / "train") == gnu_tar_reference(dataset.train_tar, tmp_path / "gnu")
    assert link.is_symlink()


def test_a_file_or_a_link_in_a_class_folders_place_leaves_nothing_behind(
        dataset: Dataset, tmp_path: Path) -> None:
    assert dataset.run("apply") == 0
    train = dataset.root / "train"
    shutil.rmtree(train / WNIDS[0])
    (train / WNIDS[0]).write_text("not a folder")
    user, before = _users_dir(tmp_path)
    shutil.rmtree(train / WNIDS[1])
    (train / WNIDS[1]).symlink_to(user / WNIDS[0])
    assert dataset.run("apply") == 0
    assert tree_digest(user) == before, "the link's target was touched"
    assert not [p.name for p in train.iterdir() if p.name.startswith(".")], "a .old or .partial was left"
    assert tree_digest(train) == gnu_tar_reference(dataset.train_tar, tmp_path / "gnu")
    assert dataset.run("verify") == 0
