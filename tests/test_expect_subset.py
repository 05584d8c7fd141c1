"""`expect` (counts the archive must give) and `classes` (a subset on disk), through real applies of real tars."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from conftest import WNIDS, Dataset, class_tree, gnu_tar_reference, sha256, tree_digest, write_manifest
from datasetd.config.parsing import load
from datasetd.demo import class_tar, tar_bytes
from datasetd.errors import ManifestError


def uneven_train(root: Path, counts: dict[str, int]) -> Path:
    rng = random.Random(7)
    data = tar_bytes([(f"{w}.tar", class_tar(w, rng, n, (100, 400))) for w, n in counts.items()])
    (root / "sources").mkdir(parents=True, exist_ok=True)
    (root / "sources" / "train.tar").write_bytes(data)
    return root / "sources" / "train.tar"


def train_manifest(tmp_path: Path, root: Path, extra: str) -> Path:
    return write_manifest(tmp_path / "m.toml", root, f"""
[components.train]
source = "file"
path = "sources/train.tar"
unpack = "class-tars"
into = "train"
{extra}
""")


def run(manifest: Path, *args: str) -> int:
    from datasetd import cli

    return cli.main(["--log-format", "json", *args, str(manifest)])


COUNTS = {WNIDS[0]: 5, WNIDS[1]: 4, WNIDS[2]: 5}


def test_expectation_met_is_ready(tmp_path: Path) -> None:
    root = tmp_path / "root"
    uneven_train(root, COUNTS)
    m = train_manifest(tmp_path, root, "expect = { classes = 3, files = 14, per_class_min = 4, per_class_max = 5 }")
    assert run(m, "apply") == 0
    assert sorted(p.name for p in (root / "train").iterdir()) == sorted(COUNTS)


def test_wrong_expectation_fails_naming_the_classes_and_extracts_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "root"
    uneven_train(root, COUNTS)
    m = train_manifest(tmp_path, root, "expect = { classes = 3, files = 15, per_class = 5 }")
    assert run(m, "apply") == 1
    err = capsys.readouterr().err
    assert f"{WNIDS[1]}: 4 files, expected 5" in err
    assert "14 files in all, expected 15" in err
    assert WNIDS[0] + ":" not in err  # classes that are right are not named
    assert not (root / "train").exists() or not any((root / "train").iterdir())
    import json

    status = json.loads((root / ".datasetd/status.json").read_text())["components"]["train"]
    assert status["phase"] == "error" and f"{WNIDS[1]}: 4 files, expected 5" in status["last_error"]


def test_subset_extracts_only_its_classes_and_leaves_the_archive(dataset: Dataset, tmp_path: Path) -> None:
    subset = [WNIDS[5], WNIDS[2]]
    (tmp_path / "subset.txt").write_text(f"# ImageNet-2\n{subset[0]}\n\n{subset[1]}\n")
    text = dataset.manifest.read_text().replace(
        'into = "train"\n', 'into = "train"\nclasses = "subset.txt"\nexpect = { classes = 2, per_class = 6 }\n', 1)
    dataset.manifest.write_text(text)
    before = sha256(dataset.train_tar.read_bytes())
    assert dataset.run("apply") == 0
    assert sorted(p.name for p in (dataset.root / "train").iterdir()) == sorted(subset)
    reference = gnu_tar_reference(dataset.train_tar, tmp_path / "gnu")
    for w in subset:
        assert tree_digest(dataset.root / "train" / w) == class_tree(reference, w)
    assert sha256(dataset.train_tar.read_bytes()) == before
    extracted = {s[1] for s in dataset.steps() if s[0] == "train" and s[2] == "ExtractUnit"}
    assert extracted == set(subset)
    train = dataset.status()["components"]["train"]
    assert train["phase"] == "ready" and train["classes_total"] == 2
    assert dataset.run("apply") == 0  # converged: the other classes are not "missing"
    assert dataset.run("verify") == 0


def test_subset_naming_a_class_the_archive_lacks_is_an_error(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "root"
    uneven_train(root, COUNTS)
    m = train_manifest(tmp_path, root, f'classes = ["{WNIDS[0]}", "n09999999"]')
    assert run(m, "apply") == 1
    assert "components.train.classes: n09999999 not in train.tar (1 of 2)" in capsys.readouterr().err
    assert not (root / "train" / WNIDS[0]).exists()


@pytest.mark.parametrize("extra,message", [
    ('classes = ["tench"]', "components.train.classes: 'tench' is not a WordNet ID"),
    ('classes = ["n01440764", "n01440764"]', "n01440764 is listed twice"),
    ('classes = "missing.txt"', "components.train.classes: cannot read"),
    ("expect = { per_class = 5, per_class_min = 1 }", "components.train.expect.per_class: conflicts"),
    ("expect = { per_class_min = 6, per_class_max = 5 }", "per_class_min: is larger than per_class_max"),
    ("expect = { files = -1 }", "components.train.expect.files"),
    ("expect = { file = 3 }", "did you mean 'files'"),
])
def test_bad_expect_and_classes_keys(tmp_path: Path, extra: str, message: str) -> None:
    m = train_manifest(tmp_path, tmp_path / "root", extra)
    with pytest.raises(ManifestError, match=message.replace(".", r"\.").replace("(", r"\(")):
        load(m)


def test_classes_file_line_is_named(tmp_path: Path) -> None:
    (tmp_path / "c.txt").write_text("n01440764\nimagenet-100\n")
    m = train_manifest(tmp_path, tmp_path / "root", 'classes = "c.txt"')
    with pytest.raises(ManifestError, match=r"c\.txt:2: 'imagenet-100' is not a WordNet ID"):
        load(m)


def test_per_class_counts_need_class_folders(tmp_path: Path) -> None:
    m = write_manifest(tmp_path / "m.toml", tmp_path / "root", """
[components.val]
source = "file"
path = "v.tar"
unpack = "tar"
into = "val"
expect = { classes = 1000, files = 50000 }
""")
    with pytest.raises(ManifestError, match=r"components\.val\.expect\.classes: counts per class need"):
        load(m)
