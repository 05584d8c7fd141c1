"""Devkit reading: real .mat files written with scipy.io.savemat in the 2012, 2014 and 2015 layouts."""

from __future__ import annotations

from pathlib import Path

import pytest

from datasetd.archive.devkit import find_devkit, label_files, label_files_by_id, read_solution_csv
from datasetd.errors import BadDevkit
from imagenet_synth import LEAVES, WORDS, make_devkit, solution_csv, val_name, write_meta

VAL = [LEAVES[i % len(LEAVES)] for i in (3, 0, 4, 1, 2, 2, 0, 4, 1, 3)]


@pytest.mark.parametrize("year,id_field", [(2012, "ILSVRC2012_ID"), (2014, "ILSVRC2014_ID"),
                                           (2015, "ILSVRC2015_CLSLOC_ID")])
def test_every_devkit_layout_gives_leaves_by_id_and_labels_by_name(tmp_path: Path, year: int,
                                                                   id_field: str) -> None:
    make_devkit(tmp_path / "any-top-folder", year, VAL)
    kit = find_devkit(tmp_path)
    assert kit.id_field == id_field
    assert [s.wnid for s in kit.classes] == LEAVES  # ancestors dropped, ID order kept (not WNID order)
    assert [s.ilsvrc_id for s in kit.classes] == [1, 2, 3, 4, 5]
    assert kit.by_wnid()["n03126707"].words == WORDS["n03126707"]
    names = [val_name(i) for i in range(len(VAL), 0, -1)]  # handed over in reverse: order must not matter
    labels = label_files(names, kit)
    assert [labels[val_name(i)] for i in range(1, len(VAL) + 1)] == VAL


def test_ground_truth_line_naming_no_leaf_is_an_error_with_its_line(tmp_path: Path) -> None:
    top = make_devkit(tmp_path, 2012, VAL)
    gt = top / "data" / "ILSVRC2012_validation_ground_truth.txt"
    lines = gt.read_text().splitlines()
    lines[6] = str(len(LEAVES) + 1)  # the root's ID: an ancestor, not a class
    gt.write_text("\n".join(lines) + "\n")
    with pytest.raises(BadDevkit, match=r"ILSVRC2012_validation_ground_truth\.txt:7: '6' is not"):
        find_devkit(tmp_path)


def test_wrong_line_count_names_the_ground_truth_file(tmp_path: Path) -> None:
    make_devkit(tmp_path, 2014, VAL)
    kit = find_devkit(tmp_path)
    with pytest.raises(BadDevkit, match=r"clsloc_validation_ground_truth\.txt:10: 10 labels for 9 val files"):
        label_files([val_name(i) for i in range(1, 10)], kit)


def test_unparsable_meta_and_missing_devkit(tmp_path: Path) -> None:
    with pytest.raises(BadDevkit, match="no devkit found"):
        find_devkit(tmp_path)
    top = make_devkit(tmp_path, 2012, VAL)
    (top / "data" / "meta.mat").write_bytes(b"MATLAB 5.0 MAT-file, but cut" + b"\0" * 10)
    with pytest.raises(BadDevkit, match=r"meta\.mat: not a readable MATLAB file"):
        find_devkit(tmp_path)


def test_duplicate_class_in_meta_is_refused(tmp_path: Path) -> None:
    write_meta(tmp_path / "d" / "data" / "meta.mat", 2012, [*LEAVES, LEAVES[0]])
    (tmp_path / "d" / "data" / "ILSVRC2012_validation_ground_truth.txt").write_text("1\n")
    with pytest.raises(BadDevkit, match="listed twice"):
        find_devkit(tmp_path)


def test_solution_csv_labels_and_errors(tmp_path: Path) -> None:
    path = solution_csv(tmp_path / "LOC_val_solution.csv", VAL)
    sol = read_solution_csv(path)
    labels = label_files_by_id([val_name(i) for i in range(1, len(VAL) + 1)], sol, path)
    assert [labels[val_name(i)] for i in range(1, len(VAL) + 1)] == VAL
    with pytest.raises(BadDevkit, match=r"no label for val file ILSVRC2012_val_00000011\.JPEG"):
        label_files_by_id([val_name(11)], sol, path)
    path.write_text(path.read_text().replace(f"{VAL[2]} 1 2", "junk 1 2", 1))
    with pytest.raises(BadDevkit, match=r"LOC_val_solution\.csv:4: expected ImageId,WNID"):
        read_solution_csv(path)
