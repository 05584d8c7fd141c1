"""The planner: a pure function from (manifest, observed state) to the next actions.

Level-triggered (kopf's model): it never remembers what it did; it looks at
what is, and says the next step for each unit. The class-tar protocol lives
here as a table (design.md): the executor re-observes after every step and
asks again, so a crash anywhere resumes at the right step.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from datasetd.config.dataset import Expect
from datasetd.config.manifest import Component, Manifest
from datasetd.core import expect as expectations
from datasetd.core.model import (
    FLAT,
    Action,
    AdoptUnit,
    ArchiveState,
    ArrangeByClass,
    Blocked,
    ComponentState,
    DeleteArchive,
    DeleteClassTar,
    ExtractUnit,
    Fetch,
    IndexArchive,
    Journal,
    MarkProcessed,
    Observed,
    Origin,
    ProveArchive,
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
    """Memoised: the planner runs after every step and builds these for every unit still to do, six
    Paths each (1,000 classes: ~3 M Path objects over an apply otherwise). The result is frozen."""
    if unit == FLAT:
        parent, name = into.parent, into.name
        return UnitPaths(into, parent / f".{name}.partial", parent / f".{name}.old",
                         parent / f"{name}.tar", parent / f"Z_{name}.tar", parent / f".{name}.arrange.json")
    return UnitPaths(into / unit, into / f".{unit}.partial", into / f".{unit}.old",
                     into / f"{unit}.tar", into / f"Z_{unit}.tar", into / f".{unit}.arrange.json")


def plan(manifest: Manifest, observed: Observed) -> list[Action]:
    """Every action that can start now, in dependency order."""
    actions: list[Action] = []
    for comp in manifest.enabled():
        state = observed.components.get(comp.name)
        if state is None:
            continue
        waiting = [d for d in comp.after if not is_ready(manifest.components[d],
                                                          observed.components.get(d))]
        if waiting:
            continue
        actions.extend(plan_component(comp, state))
    return actions


def is_ready(comp: Component, state: ComponentState | None) -> bool:
    """Converged: the component's result is on disk, verified, and nothing is left to clean."""
    if state is None or not comp.enabled:
        return False
    if comp.unpack == "none":
        return state.archive.present and state.archive.verified
    return state.archive.indexed and not plan_component(comp, state)


def plan_component(comp: Component, state: ComponentState) -> list[Action]:
    archive = state.archive
    if comp.unpack == "none":
        if archive.present and archive.verified:
            return []
        return [_archive_step(comp, archive)]
    if not archive.indexed:
        return [_archive_step(comp, archive)]
    units = selected_units(comp, state)
    if not archive.proven:
        return _while_proving(comp, archive, units, state.inodes_free)
    refusal = _refusal(comp, state, units)
    if refusal is not None:
        return [refusal]
    actions: list[Action] = []
    needs_archive = False
    for unit in units:
        action = plan_unit(comp, archive, unit)
        if action is _NEEDS_ARCHIVE:
            needs_archive = True
        elif action is not None:
            actions.append(action)
    if needs_archive:
        actions.append(_archive_step(comp, archive))
    if not actions and _may_delete_archive(comp, archive):
        actions.append(DeleteArchive(comp.name, path=comp.archive))
    return actions


def _while_proving(comp: Component, archive: ArchiveState, units: tuple[UnitState, ...],
                   inodes_free: int | None) -> list[Action]:
    """The outer headers are indexed, the full pass not yet: run it (ProveArchive), and meanwhile
    extract every unit that has nothing on disk, read in place. What would replace, adopt, rename
    or delete anything waits for the verdict, and no unit is committed verified before it (the
    executor's group commit): a bad archive forgets and removes only folders made meanwhile.

    Members are not counted yet, so the inode check cannot have run: a class tar of n bytes holds
    at most n // 512 entries (a header each), and units start only while those bounds, summed over
    every unit not yet extracted up to this one (running ones included), fit in the free inodes.
    The exact check follows the verdict, as before; a full disk is never found half-way."""
    actions: list[Action] = [ProveArchive(comp.name, path=comp.archive)]
    if comp.expect is not None or comp.classes is not None:
        return actions  # what they refuse is known from the full index only: no work before it
    budget = inodes_free if inodes_free is not None else 0
    for unit in units:
        if unit.journal is not Journal.NONE:
            continue  # extracted: its inodes are already taken, and counted in what is free
        budget -= unit.index.size // 512 + 1
        if budget < 0:
            break
        action = plan_unit(comp, archive, unit)
        if isinstance(action, ExtractUnit) and not action.replace and not action.origin.loose:
            actions.append(action)
    return actions


def selected_units(comp: Component, state: ComponentState) -> tuple[UnitState, ...]:
    """The units the manifest asks for: every one, or those of its `classes` subset."""
    if comp.classes is None:
        return state.units
    return tuple(u for u in state.units if comp.selected(u.name))


def _refusal(comp: Component, state: ComponentState, units: tuple[UnitState, ...]) -> Blocked | None:
    """The archive's index already shows the result cannot be what the manifest asks: stop before work."""
    if comp.classes is not None:
        missing = sorted(set(comp.classes) - {u.name for u in state.units})
        if missing:
            return Blocked(comp.name, reason=f"components.{comp.name}.classes: {', '.join(missing[:5])}"
                           f"{' ...' if len(missing) > 5 else ''} not in {comp.archive.name} "
                           f"({len(missing)} of {len(comp.classes)}); fix the list or the archive")
    if comp.expect is None:
        return None
    if comp.unpack == "class-tars":
        wanted, per_class = comp.expect, {u.name: u.index.files for u in units}
    else:  # a flat tree's classes are known only from its labels: the arrangement checks those
        wanted, per_class = Expect(files=comp.expect.files), {}
    off = expectations.problems(wanted, per_class, sum(u.index.files for u in units))
    if not off:
        return None
    shown = "; ".join(off[:5]) + (f"; and {len(off) - 5} more" if len(off) > 5 else "")
    return Blocked(comp.name, reason=f"components.{comp.name}.expect not met by {comp.archive.name}: {shown}")


def _archive_step(comp: Component, archive: ArchiveState) -> Action:
    if archive.present and archive.verified and not archive.indexed:
        return IndexArchive(comp.name, path=comp.archive)  # fetched (and hashed), members not listed yet
    if archive.present and not archive.verified:
        # A download may be partial (a torrent writes in place) or predate a lost journal: its
        # source checks what is there and resumes. A file source's archive is hashed as it is.
        return Fetch(comp.name) if comp.downloaded else IndexArchive(comp.name, path=comp.archive)
    if archive.present:
        # verified and indexed, yet a unit cannot locate its bytes: a bug, not a user error
        return Blocked(comp.name, reason=f"{comp.archive}: archive indexed but a unit has no origin")
    if comp.downloaded:
        return Fetch(comp.name)
    return Blocked(comp.name, reason=f"{comp.archive}: archive not found; "
                   f"put it there or fix components.{comp.name}.path")


def _may_delete_archive(comp: Component, archive: ArchiveState) -> bool:
    # A subset leaves the archive in place: the other classes may be asked for later.
    return (comp.downloaded and not comp.keep_archive and comp.classes is None
            and archive.present and archive.verified)


class _NeedsArchive(Action):
    pass


_NEEDS_ARCHIVE = _NeedsArchive("")


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
        return _NEEDS_ARCHIVE
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


# ---- what a plan costs ---------------------------------------------------------------------


def unit_done(unit: UnitState) -> bool:
    """On disk as recorded (extracted or verified): what no longer needs space or extraction."""
    return unit.folder and unit.intact and unit.journal is not Journal.NONE
