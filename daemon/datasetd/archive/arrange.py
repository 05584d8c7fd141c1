"""Val arranged by class: flat `val/NAME` renamed (never copied) to `val/<wnid>/NAME`, crash-safe.

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
    Synset,
    find_devkit,
    label_files,
    label_files_by_id,
    read_solution_csv,
)
from datasetd.config.dataset import Expect
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


def move(folder: Path, records: list[FileRecord], plan: Mapping[str, str]) -> list[FileRecord]:
    """Rename each recorded file to `<wnid>/<name>` as the plan says; the records under their new names."""
    out: list[FileRecord] = []
    made: set[str] = set()
    for name, size, digest in records:
        flat = name.rsplit("/", 1)[-1]
        wnid = plan.get(flat)
        if wnid is None:
            raise PermanentError(f"{folder / name}: not in the move plan; remove it and run apply")
        new = f"{wnid}/{flat}"
        src, dst = folder / flat, folder / new
        if wnid not in made:
            (folder / wnid).mkdir(exist_ok=True)
            made.add(wnid)
        if os.path.lexists(dst):
            if os.path.lexists(src):
                raise PermanentError(f"{src}: also present as {dst}; remove the one that is not recorded")
        else:
            os.rename(src, dst)  # same directory tree: a rename, never a copy
        out.append((new, size, digest))
    # The new names must survive power loss before the journal says they are the record.
    for wnid in sorted(made):
        fsync_dir(folder / wnid)
    fsync_dir(folder)
    return out


def class_index_rows(classes: tuple[Synset, ...]) -> list[tuple[int, Synset]]:
    """(index, synset) in the order ImageFolder assigns indices: sorted WNID."""
    return list(enumerate(sorted(classes, key=lambda s: s.wnid)))


def classes_tsv(classes: tuple[Synset, ...]) -> str:
    lines = ["index\twnid\tilsvrc_id\twords"]
    lines += [f"{i}\t{s.wnid}\t{s.ilsvrc_id or ''}\t{s.words}" for i, s in class_index_rows(classes)]
    return "\n".join(lines) + "\n"


def labels_csv(into_name: str, files: list[FileRecord], classes: tuple[Synset, ...]) -> str:
    index = {s.wnid: i for i, s in class_index_rows(classes)}
    lines = ["file,wnid,index"]
    for name, _, _ in sorted(files):
        wnid = name.split("/", 1)[0]
        lines.append(f"{into_name}/{name},{wnid},{index[wnid]}")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Arranged:
    files: list[FileRecord]  # the records under their new names
    classes: tuple[Synset, ...]


def arrange_by_class(component: str, folder: Path, plan_file: Path, records: list[FileRecord],
                     sources: LabelSources, expect: Expect | None) -> Arranged:
    """The whole step: label, check, write the plan (unless a crash left one), move. Idempotent."""
    nested = [r[0] for r in records if "/" in r[0] and not plan_file.exists()]
    if nested:
        raise PermanentError(f"{folder / nested[0]}: a flat tree to arrange has no folders; "
                             "remove arrange or check the archive")
    labels = read_labels(sorted({r[0].rsplit("/", 1)[-1] for r in records}), sources)
    if expect is not None:
        per_class: dict[str, int] = {}
        for wnid in labels.by_file.values():
            per_class[wnid] = per_class.get(wnid, 0) + 1
        off = expectations.problems(expect, per_class, len(labels.by_file))
        if off:
            raise ExpectationFailed(component, off)
    if not plan_file.exists():
        write_move_plan(plan_file, labels.by_file)
    return Arranged(files=move(folder, records, read_move_plan(plan_file)), classes=labels.classes)
