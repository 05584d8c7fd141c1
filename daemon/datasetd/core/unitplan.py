"""The class-tar protocol for one unit: from its observed state to its next step (design.md's table).

Where it sits: `core.ledger` asks `plan_unit` about each unit whose observed state changed and
keeps the answer; `core.planning` turns those answers, with the component's own decisions, into
the plan. Pure: the Paths built here are names, nothing is looked at.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from datasetd.config.manifest import Component
from datasetd.core.model import (
    FLAT,
    Action,
    AdoptUnit,
    ArchiveState,
    ArrangeByClass,
    Blocked,
    ComponentState,
    DeleteClassTar,
    ExtractUnit,
    Journal,
    MarkProcessed,
    Origin,
    UnitState,
    VerifyUnit,
)


@dataclass(frozen=True)
class UnitPaths:
    folder: Path
    partial: Path
    old: Path  # where a folder that failed its check waits while its replacement is renamed in
    plain_tar: Path
    marked_tar: Path
    arrange_plan: Path  # the move plan of a flat tree being arranged by class


def unit_paths(comp: Component, unit: str) -> UnitPaths:
    assert comp.into is not None
    return _unit_paths(comp.into, unit)


@functools.lru_cache(maxsize=1 << 16)
def _unit_paths(into: Path, unit: str) -> UnitPaths:
    """Memoised: observation and the planner build these for the same unit at each of its steps, six
    Paths each (1,000 classes: millions of Path objects over an apply otherwise). The result is frozen."""
    if unit == FLAT:
        parent, name = into.parent, into.name
        return UnitPaths(into, parent / f".{name}.partial", parent / f".{name}.old",
                         parent / f"{name}.tar", parent / f"Z_{name}.tar", parent / f".{name}.arrange.json")
    return UnitPaths(into / unit, into / f".{unit}.partial", into / f".{unit}.old",
                     into / f"{unit}.tar", into / f"Z_{unit}.tar", into / f".{unit}.arrange.json")


class _NeedsArchive(Action):
    pass


NEEDS_ARCHIVE = _NeedsArchive("")


def selected_units(comp: Component, state: ComponentState) -> tuple[UnitState, ...]:
    """The units the manifest asks for: every one, or those of its `classes` subset."""
    if comp.classes is None:
        return state.units
    return tuple(u for u in state.units if comp.selected(u.name))


def plan_unit(comp: Component, archive: ArchiveState, unit: UnitState) -> Action | None:
    """The class-tar protocol: one row of design.md's table per branch."""
    if unit.index.problem:
        return Blocked(comp.name, reason=unit.index.problem, unit=unit.name)
    if comp.arrange is not None and _arrange_next(unit):
        paths = unit_paths(comp, unit.name)
        return ArrangeByClass(comp.name, unit.name, folder=paths.folder, plan_file=paths.arrange_plan)
    if unit.journal is Journal.VERIFIED and unit.folder and unit.intact and unit.loose_tar is None:
        return None  # done: the common case at every round, so no paths are built for it
    paths = unit_paths(comp, unit.name)
    loose = loose_path(paths, unit)
    if unit.journal is Journal.VERIFIED and unit.folder and unit.intact:
        return DeleteClassTar(comp.name, unit.name, tar=loose) if loose else None
    if unit.journal is Journal.EXTRACTED and unit.folder and unit.intact:
        if loose is not None and loose == paths.plain_tar:
            return MarkProcessed(comp.name, unit.name, tar=loose, marked=paths.marked_tar)
        return VerifyUnit(comp.name, unit.name, folder=paths.folder)
    origin = _origin(comp, archive, unit, loose)
    if origin is None:
        return NEEDS_ARCHIVE
    if unit.folder and unit.journal is Journal.NONE:
        return AdoptUnit(comp.name, unit.name, origin=origin, folder=paths.folder, partial=paths.partial,
                         old=paths.old, expected_bytes=unit.index.bytes)
    # No folder, or a recorded folder that lost files or changed size: extract (again).
    return ExtractUnit(comp.name, unit.name, origin=origin, folder=paths.folder, partial=paths.partial,
                       old=paths.old, expected_bytes=unit.index.bytes, replace=unit.folder)


def _arrange_next(unit: UnitState) -> bool:
    """A started arrangement resumes first (its files are half moved); a verified flat tree starts one."""
    if unit.arranging and unit.journal is not Journal.NONE and unit.folder:
        return True
    return unit.journal is Journal.VERIFIED and unit.folder and unit.intact and not unit.arranged


def loose_path(paths: UnitPaths, unit: UnitState) -> Path | None:
    # A loose tar the index did not hash (it appeared after the index pass of a pinned archive) cannot
    # be compared with anything: like one of the wrong size, it is neither used nor deleted.
    if unit.loose_tar is None or not unit.loose_tar_ok or not unit.index.sha256:
        return None
    return paths.marked_tar if unit.loose_tar.startswith("Z_") else paths.plain_tar


def _origin(comp: Component, archive: ArchiveState, unit: UnitState, loose: Path | None) -> Origin | None:
    idx = unit.index
    if loose is not None:
        return Origin(path=loose, offset=0, size=idx.size, sha256=idx.sha256, loose=True)
    if archive.present and archive.verified:
        return Origin(path=comp.archive, offset=idx.offset, size=idx.size, sha256=idx.sha256, loose=False)
    return None


def unit_done(unit: UnitState) -> bool:
    """On disk as recorded (extracted or verified): what no longer needs space or extraction."""
    return unit.folder and unit.intact and unit.journal is not Journal.NONE
