"""Which folder of a tree an arrangement by class moves files in, and whether it is done: pure.

A flat val tar (ILSVRC2012_img_val.tar) puts its files at the top of `into`; the
ILSVRC2015 CLS-LOC archive puts them in `ILSVRC2015/Data/CLS-LOC/val/` (the
Kaggle copy: `ILSVRC/Data/CLS-LOC/val/`). Used by observe (is it arranged?) and
by the arrangement step (what to move).
"""

from __future__ import annotations

from collections.abc import Iterable

from datasetd.errors import PermanentError

CLS_LOC_VAL = "Data/CLS-LOC/val"
CLS_LOC_ROOTS = ("ILSVRC2015", "ILSVRC")  # the archive's own top folder, and the Kaggle copy's


def val_dir(names: Iterable[str]) -> str:
    """The folder whose files are arranged: `<root>/Data/CLS-LOC/val` in a CLS-LOC tree, else the top ("")."""
    found = {f"{top}/{CLS_LOC_VAL}" for n in names for top in CLS_LOC_ROOTS if n.startswith(f"{top}/{CLS_LOC_VAL}/")}
    if len(found) > 1:
        raise PermanentError(f"two val folders to arrange ({', '.join(sorted(found))}); keep one")
    return found.pop() if found else ""


def in_val_dir(name: str, folder: str) -> bool:
    """A file directly in the val folder: not yet moved into its class."""
    parent, _, _ = name.rpartition("/")
    return parent == folder


def arranged(names: Iterable[str]) -> bool:
    names = list(names)
    if not names:
        return False
    try:
        folder = val_dir(names)
    except PermanentError:
        return False
    return not any(in_val_dir(n, folder) for n in names)
