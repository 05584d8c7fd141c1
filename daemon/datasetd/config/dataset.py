"""Manifest keys that say what the data set must be: `expect` (counts) and `classes` (a subset).

Read by config.manifest for each component; checked by the pure planner
(core.expect) once the archive's index is known, and by `verify --report`.
"""

from __future__ import annotations

import re
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


def read_expect(r: Reader, unpack: str) -> Expect | None:
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
    if exp.per_class_checked and unpack != "class-tars":
        raise t.fail("classes" if exp.classes is not None else "per_class",
                     'counts per class need class folders (unpack = "class-tars")', "check only files here")
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
