"""Val arranged by class: flat `val/NAME` renamed (never copied) to `val/<wnid>/NAME`, crash-safe.

The val folder is the top of a flat val tar's tree, or `ILSVRC2015/Data/CLS-LOC/val/`
(the Kaggle copy: `ILSVRC/...`) of the CLS-LOC archive (core.arrangement).

Sits after a flat val tree is extracted and verified. Every check happens
before the first rename (a label naming no known class, a file with no label,
a cross-check that disagrees: an error naming the file, nothing moved). Then
the move plan is written durably, and the renames follow it; a SIGKILL or
power cut at any point leaves each file at its old or its new name, and
running the same plan again finishes the job (a file already at its new name
is skipped). The caller records the new names and removes the plan.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from datasetd.archive.devkit import (
    WNID_RE,
    Synset,
    find_devkit,
    label_files,
    label_files_by_id,
    read_solution_csv,
)
from datasetd.config.dataset import Expect
from datasetd.core import arrangement
from datasetd.core import expect as expectations
from datasetd.core.model import FileRecord
from datasetd.errors import BadDevkit, ExpectationFailed, PermanentError
from datasetd.state.durable import fsync_dir, save_file


@dataclass(frozen=True)
class LabelSources:
    devkit_tree: Path | None = None  # a devkit component's `into`
    csv: Path | None = None  # LOC_val_solution.csv
    cross_check: Path | None = None  # a second CSV that must agree


@dataclass(frozen=True)
class Labels:
    by_file: dict[str, str]  # val file name -> WNID
    classes: tuple[Synset, ...]  # the devkit's leaves (ILSVRC ID order), or WNIDs seen in a CSV


def read_labels(names: list[str], sources: LabelSources) -> Labels:
    """One WNID per val file, checked against the devkit's classes and the cross-check."""
    if sources.devkit_tree is not None:
        kit = find_devkit(sources.devkit_tree)
        by_file, classes = label_files(names, kit), kit.classes
        origin = kit.ground_truth
    elif sources.csv is not None:
        by_file = label_files_by_id(names, read_solution_csv(sources.csv), sources.csv)
        classes = tuple(Synset(w, 0, "") for w in sorted(set(by_file.values())))
        origin = sources.csv
    else:  # the manifest reader requires one of the two
        raise PermanentError("no label source")
    known = {s.wnid for s in classes}
    for name, wnid in sorted(by_file.items()):
        if wnid not in known:
            raise BadDevkit(str(origin), f"val file {name} is labelled {wnid}, which is no class of the devkit")
    if sources.cross_check is not None:
        other = label_files_by_id(names, read_solution_csv(sources.cross_check), sources.cross_check)
        for name in sorted(by_file):
            if other[name] != by_file[name]:
                raise BadDevkit(str(sources.cross_check), f"val file {name}: labelled {other[name]} here but "
                                f"{by_file[name]} by {origin.name}; nothing was moved")
    return Labels(by_file=by_file, classes=classes)


def write_move_plan(plan_file: Path, labels: Mapping[str, str]) -> None:
    """Durable before the first rename: after a crash the plan says where every file belongs."""
    with save_file(plan_file) as f:
        json.dump(dict(sorted(labels.items())), f)


def read_move_plan(plan_file: Path) -> dict[str, str]:
    try:
        data = json.loads(plan_file.read_text())
    except (OSError, ValueError) as e:
        raise PermanentError(f"{plan_file}: unreadable move plan ({e}); remove it and run apply") from e
    if not isinstance(data, dict):
        raise PermanentError(f"{plan_file}: not a move plan; remove it and run apply")
    return {str(k): str(v) for k, v in data.items()}


def val_records(records: list[FileRecord], folder: str) -> list[FileRecord]:
    """The val files: directly in `folder`, or already moved into `folder/<wnid>/`."""
    out = []
    for rec in records:
        parent = rec[0].rpartition("/")[0]
        above, _, leaf = parent.rpartition("/")
        if parent == folder or (above == folder and WNID_RE.fullmatch(leaf)):
            out.append(rec)
    return out


def move(tree: Path, records: list[FileRecord], plan: Mapping[str, str]) -> tuple[list[FileRecord], list[FileRecord]]:
    """Rename each val file to `<wnid>/<name>` in its folder as the plan says: (every record, the moved ones)."""
    vdir = arrangement.val_dir(r[0] for r in records)
    folder = tree / vdir if vdir else tree
    prefix = f"{vdir}/" if vdir else ""
    moving = {r[0] for r in val_records(records, vdir)}
    out: list[FileRecord] = []
    moved: list[FileRecord] = []
    made: set[str] = set()
    for name, size, digest in records:
        if name not in moving:
            out.append((name, size, digest))
            continue
        flat = name.rsplit("/", 1)[-1]
        wnid = plan.get(flat)
        if wnid is None:
            raise PermanentError(f"{tree / name}: not in the move plan; remove it and run apply")
        src, dst = folder / flat, folder / wnid / flat
        if wnid not in made:
            (folder / wnid).mkdir(exist_ok=True)
            made.add(wnid)
        if os.path.lexists(dst):
            if os.path.lexists(src):
                raise PermanentError(f"{src}: also present as {dst}; remove the one that is not recorded")
        else:
            os.rename(src, dst)  # same directory tree: a rename, never a copy
        moved.append((f"{prefix}{wnid}/{flat}", size, digest))
        out.append(moved[-1])
    # The new names must survive power loss before the journal says they are the record.
    for wnid in sorted(made):
        fsync_dir(folder / wnid)
    fsync_dir(folder)
    return out, moved


def class_index_rows(classes: tuple[Synset, ...]) -> list[tuple[int, Synset]]:
    """(index, synset) in the order ImageFolder assigns indices: sorted WNID."""
    return list(enumerate(sorted(classes, key=lambda s: s.wnid)))


def classes_tsv(classes: tuple[Synset, ...]) -> str:
    lines = ["index\twnid\tilsvrc_id\twords"]
    lines += [f"{i}\t{s.wnid}\t{s.ilsvrc_id or ''}\t{s.words}" for i, s in class_index_rows(classes)]
    return "\n".join(lines) + "\n"


def labels_csv(into_name: str, moved: list[FileRecord], classes: tuple[Synset, ...]) -> str:
    index = {s.wnid: i for i, s in class_index_rows(classes)}
    lines = ["file,wnid,index"]
    for name, _, _ in sorted(moved):
        wnid = name.rsplit("/", 2)[-2]
        lines.append(f"{into_name}/{name},{wnid},{index[wnid]}")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Arranged:
    files: list[FileRecord]  # every record, the moved ones under their new names
    moved: list[FileRecord]  # the val files, under their new names
    classes: tuple[Synset, ...]


def arrange_by_class(component: str, folder: Path, plan_file: Path, records: list[FileRecord],
                     sources: LabelSources, expect: Expect | None) -> Arranged:
    """The whole step: label, check, write the plan (unless a crash left one), move. Idempotent."""
    vdir = arrangement.val_dir(r[0] for r in records)
    labels = read_labels(sorted({r[0].rsplit("/", 1)[-1] for r in val_records(records, vdir)}), sources)
    if expect is not None:
        per_class: dict[str, int] = {}
        for wnid in labels.by_file.values():
            per_class[wnid] = per_class.get(wnid, 0) + 1
        off = expectations.problems(expect, per_class, len(labels.by_file))
        if off:
            raise ExpectationFailed(component, off)
    if not plan_file.exists():
        write_move_plan(plan_file, labels.by_file)
    files, moved = move(folder, records, read_move_plan(plan_file))
    return Arranged(files=files, moved=moved, classes=labels.classes)
