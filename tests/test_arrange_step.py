"""The arrangement step on a real flat val tree and a real devkit (savemat), and its planner rows and keys.

The end-to-end flow (apply, SIGKILL sweep, a real consumer) is in test_arrange.py.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from pathlib import Path

import pytest

from datasetd.archive.arrange import LabelSources, arrange_by_class, classes_tsv, labels_csv
from datasetd.config.dataset import Expect
from datasetd.config.parsing import load
from datasetd.core.model import FLAT, ArchiveState, ArrangeByClass, ComponentState, Journal, UnitIndex, UnitState
from datasetd.core.planning import plan_component
from datasetd.errors import BadDevkit, ExpectationFailed, ManifestError
from imagenet_synth import LEAVES, PER_CLASS, build_val_set, solution_csv


def flat_tree(tmp_path: Path, year: int = 2012) -> tuple[Path, Path, list[tuple[str, int, str]], dict[str, str],
                                                         dict[str, bytes]]:
    vs = build_val_set(tmp_path, year)
    val = tmp_path / "val"
    with tarfile.open(vs.root / "src" / "val.tar") as t:
        t.extractall(val, filter="data")
    kit = tmp_path / "devkit"
    with tarfile.open(vs.root / "src" / "devkit.tar") as t:
        t.extractall(kit, filter="data")
    records = [(n, len(b), hashlib.sha256(b).hexdigest()) for n, b in sorted(vs.files.items())]
    return val, kit, records, vs.truth, vs.files


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("year", [2012, 2014, 2015])
def test_files_are_renamed_into_their_class_and_records_follow(tmp_path: Path, year: int) -> None:
    val, kit, records, truth, files = flat_tree(tmp_path, year)
    inodes = {n: os.stat(val / n).st_ino for n in files}
    plan = tmp_path / ".val.arrange.json"
    done = arrange_by_class("val", val, plan, records, LabelSources(devkit_tree=kit),
                            Expect(classes=len(LEAVES), per_class=PER_CLASS))
    assert tree(val) == {f"{truth[n]}/{n}": b for n, b in files.items()}
    assert all(os.stat(val / truth[n] / n).st_ino == ino for n, ino in inodes.items())  # renamed, not copied
    assert sorted(done.files) == sorted((f"{truth[n]}/{n}", s, d) for n, s, d in records)
    assert [s.wnid for s in done.classes] == LEAVES
    tsv = classes_tsv(done.classes).splitlines()
    assert [line.split("\t")[1] for line in tsv[1:]] == sorted(LEAVES)
    assert labels_csv("val", done.files, done.classes).splitlines()[1].startswith("val/")
    # again, with the plan still there (a crash before it was removed): nothing moves, same records
    assert sorted(arrange_by_class("val", val, plan, records, LabelSources(devkit_tree=kit), None).files) == \
        sorted(done.files)


def test_a_half_done_move_finishes_from_the_plan(tmp_path: Path) -> None:
    val, kit, records, truth, files = flat_tree(tmp_path)
    plan = tmp_path / ".val.arrange.json"
    import json

    plan.write_text(json.dumps(truth))
    for n in sorted(files)[:4]:  # a SIGKILL after four renames
        (val / truth[n]).mkdir(exist_ok=True)
        os.rename(val / n, val / truth[n] / n)
    arrange_by_class("val", val, plan, records, LabelSources(devkit_tree=kit), None)
    assert tree(val) == {f"{truth[n]}/{n}": b for n, b in files.items()}


def test_cross_check_disagreement_and_wrong_expectation_move_nothing(tmp_path: Path) -> None:
    val, kit, records, truth, files = flat_tree(tmp_path)
    wnids = [truth[n] for n in sorted(truth)]
    wrong = list(wnids)
    wrong[5] = next(w for w in LEAVES if w != wnids[5])
    cross = solution_csv(tmp_path / "cross.csv", wrong)
    plan = tmp_path / ".val.arrange.json"
    with pytest.raises(BadDevkit, match=r"cross\.csv: val file ILSVRC2012_val_00000006\.JPEG: labelled"):
        arrange_by_class("val", val, plan, records, LabelSources(devkit_tree=kit, cross_check=cross), None)
    with pytest.raises(ExpectationFailed, match=rf"{LEAVES[0]}: {PER_CLASS} files, expected {PER_CLASS + 1}"):
        arrange_by_class("val", val, plan, records, LabelSources(devkit_tree=kit), Expect(per_class=PER_CLASS + 1))
    assert tree(val) == files and not plan.exists()


def test_csv_labels_and_an_unlabelled_file(tmp_path: Path) -> None:
    val, _kit, records, truth, files = flat_tree(tmp_path)
    wnids = [truth[n] for n in sorted(truth)]
    csv_path = solution_csv(tmp_path / "LOC_val_solution.csv", wnids[:-1])  # the last file has no row
    with pytest.raises(BadDevkit, match=r"no label for val file ILSVRC2012_val_00000015\.JPEG"):
        arrange_by_class("val", val, tmp_path / "p.json", records, LabelSources(csv=csv_path), None)
    assert tree(val) == files
    solution_csv(csv_path, wnids)
    arrange_by_class("val", val, tmp_path / "p.json", records, LabelSources(csv=csv_path), None)
    assert tree(val) == {f"{truth[n]}/{n}": b for n, b in files.items()}


def val_state(journal: Journal, intact: bool = True, arranged: bool = False, arranging: bool = False) -> ComponentState:
    unit = UnitState(index=UnitIndex(FLAT, 0, 10, "x", 15, 0, 100), folder=True, journal=journal, intact=intact,
                     arranged=arranged, arranging=arranging)
    return ComponentState(archive=ArchiveState(present=True, size=10, verified=True, indexed=True), units=(unit,))


def test_planner_rows_for_arrangement(tmp_path: Path) -> None:
    vs = build_val_set(tmp_path)
    comp = load(vs.manifest).components["val"]
    (step,) = plan_component(comp, val_state(Journal.VERIFIED))
    assert isinstance(step, ArrangeByClass) and step.plan_file == vs.root / ".val.arrange.json"
    assert plan_component(comp, val_state(Journal.VERIFIED, arranged=True)) == []
    # half moved: the folder no longer matches the record, yet it resumes instead of re-extracting
    (resume,) = plan_component(comp, val_state(Journal.VERIFIED, intact=False, arranging=True))
    assert isinstance(resume, ArrangeByClass)
    assert type(plan_component(comp, val_state(Journal.EXTRACTED))[0]).__name__ == "VerifyUnit"


@pytest.mark.parametrize("extra,message", [
    ('labels = { devkit = "devkit" }', "components.val.labels: only meaningful with arrange"),
    ('arrange = "by-class"', "components.val.labels: give exactly one of devkit or csv"),
    ('arrange = "by-class"\nlabels = { devkit = "train" }', "'train' is no component with an into"),
    ('arrange = "by-class"\nlabels = { devkit = "kit" }', "components.val.labels.devkit: 'kit' must be ready first"),
    ('arrange = "by-class"\nlabels = { csv = "../x.csv" }', "components.val.labels.csv: '../x.csv' escapes root"),
    ('arrange = "sorted"', "components.val.arrange: 'sorted' is not one of 'by-class'"),
])
def test_bad_arrange_keys(tmp_path: Path, extra: str, message: str) -> None:
    m = tmp_path / "m.toml"
    m.write_text(f"""version = 1
root = "{tmp_path / 'root'}"
[components.kit]
source = "file"
path = "kit.tar"
unpack = "tar"
into = "devkit"
[components.val]
source = "file"
path = "val.tar"
unpack = "tar"
into = "val"
{extra}
""")
    with pytest.raises(ManifestError, match=message.replace(".", r"\.").replace("(", r"\(")):
        load(m)
