"""ILSVRC devkits and label files in, plain data keyed by WNID out.

Sits after extraction: the devkit component's tree is on disk, and the val
arrangement, `classes.tsv` and `val_labels.csv` need the leaf classes and one
label per val file. Reads the three published layouts (see imagenet-facts.md):

- 2012: `data/meta.mat`, struct `synsets` with `ILSVRC2012_ID`, 1,860 entries,
  leaves have `num_children == 0`; `data/ILSVRC2012_validation_ground_truth.txt`;
- 2014: `data/meta_clsloc.mat`, the same struct with `ILSVRC2014_ID`;
  `data/ILSVRC2014_clsloc_validation_ground_truth.txt`;
- 2015: `data/meta_clsloc.mat`, a 1x1000 struct with `ILSVRC2015_CLSLOC_ID`,
  `WNID`, `name` (no `num_children`); `data/ILSVRC2015_clsloc_validation_ground_truth.txt`;

and the Kaggle copy's `LOC_val_solution.csv`. Ground-truth lines follow the
ascending order of val file *names*, never tar member order. Worker-safe: no
state, no logging, only files read.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasetd.errors import BadDevkit

META_NAMES = ("meta.mat", "meta_clsloc.mat")
GROUND_TRUTH_NAMES = (
    "ILSVRC2012_validation_ground_truth.txt",
    "ILSVRC2014_clsloc_validation_ground_truth.txt",
    "ILSVRC2015_clsloc_validation_ground_truth.txt",
)
WNID_RE = re.compile(r"n\d{8}")


@dataclass(frozen=True)
class Synset:
    wnid: str
    ilsvrc_id: int
    words: str


@dataclass(frozen=True)
class Devkit:
    meta: Path
    ground_truth: Path
    id_field: str  # ILSVRC2012_ID, ILSVRC2014_ID or ILSVRC2015_CLSLOC_ID
    classes: tuple[Synset, ...]  # the leaves, in ILSVRC ID order
    labels: tuple[str, ...]  # one WNID per val image, in ascending order of val file name

    def by_wnid(self) -> dict[str, Synset]:
        return {s.wnid: s for s in self.classes}


def find_devkit(tree: Path) -> Devkit:
    """The one devkit anywhere under `tree` (whatever its top folder is called)."""
    metas = sorted(p for name in META_NAMES for p in tree.rglob(name) if p.is_file())
    if not metas:
        raise BadDevkit(str(tree), f"no devkit found (looked for {' or '.join(META_NAMES)} under it)")
    if len(metas) > 1:
        raise BadDevkit(str(tree), "more than one devkit: " + ", ".join(str(m.relative_to(tree)) for m in metas))
    meta = metas[0]
    classes, id_field = read_meta(meta)
    gt = _ground_truth_path(meta.parent)
    return Devkit(meta=meta, ground_truth=gt, id_field=id_field, classes=classes,
                  labels=read_ground_truth(gt, {s.ilsvrc_id: s.wnid for s in classes}))


def read_meta(path: Path) -> tuple[tuple[Synset, ...], str]:
    """The leaf classes of a meta.mat / meta_clsloc.mat, in ILSVRC ID order, and the ID field's name."""
    import scipy.io  # here, not at the top: scipy costs every datasetd start ~0.3 s, and only a devkit needs it

    try:
        mat = scipy.io.loadmat(str(path), squeeze_me=True, struct_as_record=True)
    except Exception as e:  # scipy raises ValueError, TypeError, OSError... for a bad file
        raise BadDevkit(str(path), f"not a readable MATLAB file ({e})") from e
    table = _struct_array(mat)
    if table is None:
        raise BadDevkit(str(path), "no struct array with a WNID field (expected `synsets`)")
    fields = table.dtype.names or ()
    id_fields = [f for f in fields if f.endswith("_ID")]
    if len(id_fields) != 1:
        raise BadDevkit(str(path), f"expected one *_ID field, found {id_fields or 'none'}")
    id_field = id_fields[0]
    words_field = "words" if "words" in fields else "name" if "name" in fields else None
    leaves: list[Synset] = []
    for row, entry in enumerate(table.reshape(-1), start=1):
        if "num_children" in fields and int(entry["num_children"]) != 0:
            continue  # an ancestor (2012/2014 devkits list 860 of them after the 1,000 leaves)
        wnid = str(entry["WNID"])
        if not WNID_RE.fullmatch(wnid):
            raise BadDevkit(str(path), f"entry {row}: WNID {wnid!r} is not nXXXXXXXX")
        words = str(entry[words_field]) if words_field else ""
        leaves.append(Synset(wnid=wnid, ilsvrc_id=int(entry[id_field]), words=words))
    leaves.sort(key=lambda s: s.ilsvrc_id)
    _check_unique(path, leaves)
    return tuple(leaves), id_field


def _struct_array(mat: Mapping[str, Any]) -> Any:
    for key in ("synsets", *sorted(mat)):
        value = mat.get(key)
        names = getattr(getattr(value, "dtype", None), "names", None)
        if not key.startswith("__") and names and "WNID" in names:
            return value
    return None


def _check_unique(path: Path, leaves: list[Synset]) -> None:
    seen_ids: set[int] = set()
    seen_wnids: set[str] = set()
    for s in leaves:
        if s.ilsvrc_id in seen_ids or s.wnid in seen_wnids:
            raise BadDevkit(str(path), f"class {s.wnid} (id {s.ilsvrc_id}) is listed twice")
        seen_ids.add(s.ilsvrc_id)
        seen_wnids.add(s.wnid)
    if not leaves:
        raise BadDevkit(str(path), "no leaf classes")


def _ground_truth_path(data_dir: Path) -> Path:
    for name in GROUND_TRUTH_NAMES:
        if (data_dir / name).is_file():
            return data_dir / name
    raise BadDevkit(str(data_dir), f"no validation ground truth beside the meta file ({GROUND_TRUTH_NAMES[0]} "
                    "or its 2014/2015 name)")


def read_ground_truth(path: Path, id_to_wnid: Mapping[int, str]) -> tuple[str, ...]:
    """One WNID per line; every line must hold a leaf's ILSVRC ID."""
    out: list[str] = []
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as e:
        raise BadDevkit(str(path), f"cannot read ({e})") from e
    for n, line in enumerate(text.splitlines(), start=1):
        token = line.strip()
        if not token.isdigit() or int(token) not in id_to_wnid:
            raise BadDevkit(str(path), f"{token!r} is not the ID of a leaf class", line=n)
        out.append(id_to_wnid[int(token)])
    return tuple(out)


def read_solution_csv(path: Path) -> dict[str, str]:
    """`LOC_val_solution.csv` (ImageId,PredictionString): image id -> the first token's WNID."""
    out: dict[str, str] = {}
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise BadDevkit(str(path), f"cannot read ({e})") from e
    if not rows or [c.strip() for c in rows[0][:2]] != ["ImageId", "PredictionString"]:
        raise BadDevkit(str(path), "header is not ImageId,PredictionString", line=1)
    for n, row in enumerate(rows[1:], start=2):
        tokens = row[1].split() if len(row) >= 2 else []
        if not row or not row[0] or not tokens or not WNID_RE.fullmatch(tokens[0]):
            raise BadDevkit(str(path), "expected ImageId,WNID ... (a WNID first in PredictionString)", line=n)
        if row[0] in out:
            raise BadDevkit(str(path), f"image {row[0]} listed twice", line=n)
        out[row[0]] = tokens[0]
    return out


def label_files(names: Iterable[str], devkit: Devkit) -> dict[str, str]:
    """Val file name -> WNID: the ground truth's n-th line labels the n-th name in ascending order."""
    ordered = sorted(names)
    if len(ordered) != len(devkit.labels):
        raise BadDevkit(str(devkit.ground_truth),
                        f"{len(devkit.labels)} labels for {len(ordered)} val files",
                        line=min(len(ordered), len(devkit.labels)) + 1)
    return dict(zip(ordered, devkit.labels, strict=True))


def label_files_by_id(names: Iterable[str], solution: Mapping[str, str], source: Path) -> dict[str, str]:
    """Val file name -> WNID from a solution CSV keyed by file name without its extension."""
    out: dict[str, str] = {}
    for name in sorted(names):
        wnid = solution.get(name.rsplit(".", 1)[0])
        if wnid is None:
            raise BadDevkit(str(source), f"no label for val file {name}")
        out[name] = wnid
    return out
