"""Manifest keys that say what the data set must be: `expect` (counts) and `classes` (a subset).

Read by config.parsing for each component; checked by the pure planner
(core.expect) once the archive's index is known, and by `verify --report`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from datasetd.config.reader import Reader
from datasetd.errors import ManifestError

WNID_RE = re.compile(r"n\d{8}")
EXPECT_KEYS = ("classes", "files", "per_class", "per_class_min", "per_class_max")


@dataclass(frozen=True)
class Expect:
    """What a component must hold once ready; None means not checked."""

    classes: int | None = None
    files: int | None = None
    per_class: int | None = None
    per_class_min: int | None = None
    per_class_max: int | None = None

    @property
    def per_class_checked(self) -> bool:
        return self.classes is not None or self.per_class is not None or self.per_class_min is not None \
            or self.per_class_max is not None


@dataclass(frozen=True)
class Arrange:
    """`arrange = "by-class"`: where the val labels come from, and an optional second source that must agree."""

    devkit: str | None = None  # a component whose tree holds a devkit
    csv: Path | None = None  # LOC_val_solution.csv format
    cross_check: Path | None = None


def read_arrange(r: Reader, unpack: str, under_root: Callable[[Reader, str, str], Path]) -> Arrange | None:
    mode = r.choice("arrange", ("by-class",))
    labels, cross = r.table("labels"), r.table("cross_check")
    if mode is None:
        for key in ("labels", "cross_check"):
            if key in r.data:
                raise r.fail(key, 'only meaningful with arrange = "by-class"', "add arrange, or remove it")
        return None
    if unpack != "tar":
        raise r.fail("arrange", 'needs a flat tar (unpack = "tar")', "remove it or set unpack")
    devkit = labels.string("devkit")
    csv_raw = labels.string("csv")
    labels.done({"devkit", "csv"})
    if (devkit is None) == (csv_raw is None):
        raise r.fail("labels", "give exactly one of devkit or csv",
                     'labels = { devkit = "devkit" } or labels = { csv = "LOC_val_solution.csv" }')
    cross_raw = cross.string("csv", required="cross_check" in r.data)
    cross.done({"csv"})
    return Arrange(devkit=devkit, csv=under_root(labels, "csv", csv_raw) if csv_raw is not None else None,
                   cross_check=under_root(cross, "csv", cross_raw) if cross_raw is not None else None)


def read_expect(r: Reader, unpack: str, arranged: bool = False) -> Expect | None:
    t = r.table("expect")
    if not t.keys():
        if "expect" in r.data:
            raise r.fail("expect", "empty table", f"give one of {', '.join(EXPECT_KEYS)}, or remove it")
        return None
    values = {k: t.integer(k, minimum=0) for k in EXPECT_KEYS}
    t.done(EXPECT_KEYS)
    exp = Expect(**values)
    if exp.per_class is not None and (exp.per_class_min is not None or exp.per_class_max is not None):
        raise t.fail("per_class", "conflicts with per_class_min/per_class_max", "use one or the other")
    if (exp.per_class_min or 0) > (exp.per_class_max if exp.per_class_max is not None else 2**63):
        raise t.fail("per_class_min", "is larger than per_class_max", "swap them")
    if exp.per_class_checked and unpack != "class-tars" and not arranged:
        raise t.fail("classes" if exp.classes is not None else "per_class",
                     'counts per class need class folders (unpack = "class-tars", or arrange = "by-class")',
                     "check only files here")
    return exp


def read_classes(r: Reader, unpack: str, manifest_dir: Path) -> tuple[str, ...] | None:
    """`classes = ["n01440764", ...]` or `classes = "file.txt"` (one WNID a line, relative to the manifest)."""
    if "classes" not in r.data:
        return None
    raw = r.data["classes"]
    if isinstance(raw, str):
        wnids = _classes_file(r, manifest_dir / raw)
    else:
        wnids = r.strings("classes")
        for w in wnids:
            if not WNID_RE.fullmatch(w):
                raise r.fail("classes", f"{w!r} is not a WordNet ID", 'write it as "n01440764"')
    if not wnids:
        raise r.fail("classes", "no classes listed", "list at least one WNID, or remove the key")
    if len(set(wnids)) != len(wnids):
        dup = next(w for w in wnids if wnids.count(w) > 1)
        raise r.fail("classes", f"{dup} is listed twice", "list each class once")
    if unpack != "class-tars":
        raise r.fail("classes", 'a subset needs class folders (unpack = "class-tars")', "remove it here")
    return tuple(sorted(wnids))


def _classes_file(r: Reader, path: Path) -> tuple[str, ...]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise r.fail("classes", f"cannot read {path} ({e})", "give a file of one WNID a line") from e
    out: list[str] = []
    for n, line in enumerate(lines, start=1):
        token = line.split("#", 1)[0].strip()
        if not token:
            continue
        if not WNID_RE.fullmatch(token):
            raise ManifestError(f"{path}:{n}", "", f"{token[:40]!r} is not a WordNet ID",
                                "one WNID such as n01440764 a line")
        out.append(token)
    return tuple(out)
