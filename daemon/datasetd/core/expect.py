"""Expectations (`expect` in the manifest) against counts: pure, one message per thing that is off.

The planner checks them on the archive's index, before anything is extracted
and before a component can be ready; `verify --report` checks them on disk.
"""

from __future__ import annotations

from collections.abc import Mapping

from datasetd.config.dataset import Expect


def problems(expect: Expect, per_class: Mapping[str, int], total: int | None = None) -> list[str]:
    """What is off: `per_class` maps each class to its file count (empty for a flat tree)."""
    out: list[str] = []
    files = total if total is not None else sum(per_class.values())
    if expect.classes is not None and len(per_class) != expect.classes:
        out.append(f"{len(per_class):,} classes, expected {expect.classes:,}")
    if expect.files is not None and files != expect.files:
        out.append(f"{files:,} files in all, expected {expect.files:,}")
    for wnid, n in sorted(per_class.items()):
        if expect.per_class is not None and n != expect.per_class:
            out.append(f"{wnid}: {n:,} files, expected {expect.per_class:,}")
        elif expect.per_class_min is not None and n < expect.per_class_min:
            out.append(f"{wnid}: {n:,} files, expected at least {expect.per_class_min:,}")
        elif expect.per_class_max is not None and n > expect.per_class_max:
            out.append(f"{wnid}: {n:,} files, expected at most {expect.per_class_max:,}")
    return out
