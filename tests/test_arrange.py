"""Val arranged by class from each devkit layout (real savemat files), through real applies of real tars."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import pytest

from conftest import sha256, tree_digest
from imagenet_synth import LEAVES, PER_CLASS, WORDS, ValSet, build_val_set, load_imagefolder, tar_dir, val_name


def build(tmp_path: Path, year: int = 2012, labels: str = 'labels = { devkit = "devkit" }',
          extra: str = "", extra_files: int = 0, real_jpegs: bool = False) -> ValSet:
    return build_val_set(tmp_path, year, labels, extra, extra_files, real_jpegs)


@pytest.mark.parametrize("year", [2012, 2014, 2015])
def test_val_ends_up_by_class_byte_identical_with_class_index_files(tmp_path: Path, year: int) -> None:
    vs = build(tmp_path, year, extra=f"expect = {{ classes = {len(LEAVES)}, files = {len(LEAVES) * PER_CLASS}, "
                                     f"per_class = {PER_CLASS} }}")
    assert vs.run("apply") == 0
    assert tree_digest(vs.root / "val") == vs.expected_tree()
    assert not [p for p in (vs.root / "val").iterdir() if p.is_file()]
    rows = list(csv.reader((vs.root / "classes.tsv").read_text().splitlines(), delimiter="\t"))
    assert rows[0] == ["index", "wnid", "ilsvrc_id", "words"]
    assert [r[1] for r in rows[1:]] == sorted(LEAVES)  # ImageFolder's indices: sorted WNID
    assert [int(r[0]) for r in rows[1:]] == list(range(len(LEAVES)))
    assert {r[1]: (int(r[2]), r[3]) for r in rows[1:]} == {w: (LEAVES.index(w) + 1, WORDS[w]) for w in LEAVES}
    labels = list(csv.reader((vs.root / "val_labels.csv").read_text().splitlines()))
    assert labels[0] == ["file", "wnid", "index"]
    assert {Path(r[0]).name: (r[1], int(r[2])) for r in labels[1:]} == {
        n: (w, sorted(LEAVES).index(w)) for n, w in vs.truth.items()}
    subprocess.run(["sha256sum", "--quiet", "-c", str(vs.root / ".datasetd/sha256/val/val.sha256")],
                   cwd=vs.root / "val", check=True)  # the recorded digests followed the files
    assert vs.run("verify") == 0
    status = json.loads((vs.root / ".datasetd/status.json").read_text())["components"]["val"]
    assert status["phase"] == "ready"
    assert vs.run("apply") == 0  # converged: nothing moves twice
    assert tree_digest(vs.root / "val") == vs.expected_tree()


def test_solution_csv_labels_and_a_damaged_arranged_file_is_repaired(tmp_path: Path) -> None:
    vs = build(tmp_path, labels='labels = { csv = "LOC_val_solution.csv" }')
    assert vs.run("apply") == 0
    assert tree_digest(vs.root / "val") == vs.expected_tree()
    victim = next(iter(sorted(vs.truth)))
    (vs.root / "val" / vs.truth[victim] / victim).write_bytes(b"flipped")
    assert vs.run("verify") == 1
    assert vs.run("verify", "--repair") == 0
    assert tree_digest(vs.root / "val") == vs.expected_tree()


def flat_untouched(vs: ValSet) -> None:
    assert tree_digest(vs.root / "val") == {n: sha256(b) for n, b in vs.files.items()}
    assert not (vs.root / ".val.arrange.json").exists()


def test_cross_check_disagreement_names_the_file_and_moves_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    vs = build(tmp_path, extra='cross_check = { csv = "LOC_val_solution.csv" }')
    path = vs.root / "LOC_val_solution.csv"
    lines = path.read_text().splitlines()
    name4 = val_name(4)
    other = next(w for w in LEAVES if w != vs.truth[name4])
    lines[4] = f"{name4.removesuffix('.JPEG')},{other} 1 2 3 4"
    path.write_text("\n".join(lines) + "\n")
    assert vs.run("apply") == 1
    err = capsys.readouterr().err
    assert f"val file {name4}: labelled {other} here but {vs.truth[name4]}" in err
    flat_untouched(vs)


def test_label_of_no_known_class_is_an_error_naming_the_line(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    vs = build(tmp_path)
    gt = tmp_path / "kit" / "ILSVRC2012_devkit_t12" / "data" / "ILSVRC2012_validation_ground_truth.txt"
    lines = gt.read_text().splitlines()
    lines[2] = "1001"
    gt.write_text("\n".join(lines) + "\n")
    tar_dir(tmp_path / "kit" / "ILSVRC2012_devkit_t12", vs.root / "src" / "devkit.tar")
    assert vs.run("apply") == 1
    assert "ILSVRC2012_validation_ground_truth.txt:3: '1001' is not the ID of a leaf class" in capsys.readouterr().err
    flat_untouched(vs)


def test_val_file_without_a_label_is_an_error_and_moves_nothing(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    vs = build(tmp_path, labels='labels = { csv = "LOC_val_solution.csv" }', extra_files=1)
    assert vs.run("apply") == 1
    extra = val_name(len(LEAVES) * PER_CLASS + 1)
    assert f"no label for val file {extra}" in capsys.readouterr().err
    flat_untouched(vs)


def test_wrong_val_expectation_names_the_classes_and_moves_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    vs = build(tmp_path, extra=f"expect = {{ per_class = {PER_CLASS + 1} }}")
    assert vs.run("apply") == 1
    err = capsys.readouterr().err
    for w in LEAVES:
        assert f"{w}: {PER_CLASS} files, expected {PER_CLASS + 1}" in err
    flat_untouched(vs)


def test_hf_imagefolder_gives_every_val_image_its_ground_truth_label(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    vs = build(tmp_path, real_jpegs=True)
    assert vs.run("apply") == 0
    ds = load_imagefolder(vs.root / "val", tmp_path / "hf", monkeypatch)
    names = ds.features["label"].names
    assert names == sorted(LEAVES)  # the consumer's class index is classes.tsv's
    got = {Path(r["image"]["path"]).name: names[r["label"]] for r in ds}
    assert got == vs.truth  # every val image carries its ground-truth label
    index = {r.split(",")[0]: int(r.split(",")[2]) for r in (vs.root / "val_labels.csv").read_text().splitlines()[1:]}
    for r in ds:
        assert index[str(Path(r["image"]["path"]).relative_to(vs.root))] == r["label"]
