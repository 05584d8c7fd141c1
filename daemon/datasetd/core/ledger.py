"""What the planner knows of one component's units, kept in step with the observation by identity.

Where it sits: between observation and `core.planning`. A `Ledger` holds, for one ComponentState,
what `plan_unit` says of each unit, the units with something to do in archive order, and the
figures the status shows. `follow` brings a ledger to a newer ComponentState: the executor's
observation replaces only the UnitState objects a step changed (frozen objects: identity tells),
so only those units are planned again. A round then costs the units that changed plus the few
actions it starts, not a walk over every unit: at 1,000 classes an apply planned each unit about
600 times (1.1 M calls, seconds of the coordinator's CPU taken from the workers); ImageNet-21k's
21,841 classes would have spent some twenty minutes there. `follow(None, ...)` builds one from
scratch, as a one-off plan does: both paths give the same ledger (tests/test_planning_ledger.py).
"""

from __future__ import annotations

import bisect
import operator
from collections.abc import Mapping
from dataclasses import dataclass, replace
from itertools import compress

from datasetd.config.dataset import Expect
from datasetd.config.manifest import Component
from datasetd.core import expect as expectations
from datasetd.core.model import Action, Blocked, ComponentState, Journal, UnitState
from datasetd.core.unitplan import NEEDS_ARCHIVE, plan_unit, unit_done


@dataclass(frozen=True)
class Progress:
    """The selected units' figures: what is done (extracted or verified) out of what is asked."""

    bytes_done: int = 0
    bytes_total: int = 0
    files_done: int = 0
    files_total: int = 0
    verified: int = 0  # units recorded verified, folder intact
    units: int = 0


@dataclass(frozen=True)
class Ledger:
    comp: Component
    state: ComponentState
    # per position in state.units: plan_unit's answer (NEEDS_ARCHIVE included), None when the unit
    # has nothing to do or is not selected
    actions: tuple[Action | None, ...]
    worker: tuple[int, ...]  # positions, ascending (archive order), whose action runs in a worker
    inline: tuple[int, ...]  # positions, ascending, of the other unit actions (Blocked, MarkProcessed)
    fresh: tuple[int, ...]  # positions, ascending, of selected units the journal knows nothing of
    needs_archive: int  # units whose bytes are nowhere until the archive is fetched or hashed
    progress: Progress
    refusal: Blocked | None  # the index shows the manifest cannot be met (from the index alone)
    positions: Mapping[str, int]  # unit name -> position in state.units (the index's order)

    @property
    def idle(self) -> bool:
        """No unit has anything left to do (running, waiting for its commit or not started)."""
        return not self.worker and not self.inline and not self.needs_archive


def follow(previous: Ledger | None, comp: Component, state: ComponentState) -> Ledger:
    """The ledger of `state`, from `previous` (that of an earlier state of the same component) where
    only some units changed; from scratch when the component, its archive or its index did."""
    if previous is not None and previous.comp is comp and previous.state is state:
        return previous
    if previous is None or previous.comp is not comp or not _same_index(previous.state, state):
        return _build(comp, state)
    old_units = previous.state.units
    changed = list(compress(range(len(state.units)), map(operator.is_not, state.units, old_units)))
    if any(state.units[p].index is not old_units[p].index for p in changed):
        return _build(comp, state)
    ledger = replace(previous, state=state)
    for p in changed:
        ledger = _amend(ledger, p, old_units[p], state.units[p])
    return ledger


def _same_index(old: ComponentState, new: ComponentState) -> bool:
    return (old.archive == new.archive and old.archive_sha256 == new.archive_sha256
            and len(old.units) == len(new.units))


def _build(comp: Component, state: ComponentState) -> Ledger:
    """One pass over every unit (amending one at a time would copy the tuples once per unit)."""
    actions: list[Action | None] = []
    worker: list[int] = []
    inline: list[int] = []
    fresh: list[int] = []
    progress = Progress()
    for p, unit in enumerate(state.units):
        selected = comp.selected(unit.name)
        action = plan_unit(comp, state.archive, unit) if selected else None
        actions.append(action)
        if action is not None and action is not NEEDS_ARCHIVE:
            (worker if type(action).runs_in == "worker" else inline).append(p)
        if selected:
            progress = _count(progress, unit, +1)
            if unit.journal is Journal.NONE:
                fresh.append(p)
    return Ledger(comp, state, actions=tuple(actions), worker=tuple(worker), inline=tuple(inline),
                  fresh=tuple(fresh), needs_archive=sum(a is NEEDS_ARCHIVE for a in actions),
                  progress=progress, refusal=refusal(comp, state),
                  positions={u.name: p for p, u in enumerate(state.units)})


def _amend(ledger: Ledger, p: int, old: UnitState, new: UnitState) -> Ledger:
    """`ledger` with unit `p` changed from `old` to `new`."""
    comp, archive = ledger.comp, ledger.state.archive
    selected = comp.selected(new.name)
    was = ledger.actions[p]
    now = plan_unit(comp, archive, new) if selected else None
    worker, inline = _without(ledger.worker, p), _without(ledger.inline, p)
    if now is not None and now is not NEEDS_ARCHIVE:
        if type(now).runs_in == "worker":
            worker = _with(worker, p)
        else:
            inline = _with(inline, p)
    fresh = _without(ledger.fresh, p)
    if selected and new.journal is Journal.NONE:
        fresh = _with(fresh, p)
    progress = ledger.progress
    if selected:
        progress = _count(_count(progress, old, -1), new, +1)
    needs = ledger.needs_archive - (was is NEEDS_ARCHIVE) + (now is NEEDS_ARCHIVE)
    actions = (*ledger.actions[:p], now, *ledger.actions[p + 1:])
    return replace(ledger, actions=actions, worker=worker, inline=inline, fresh=fresh,
                   needs_archive=needs, progress=progress)


def _count(progress: Progress, unit: UnitState, sign: int) -> Progress:
    done = unit_done(unit)
    verified = unit.journal is Journal.VERIFIED and unit.folder and unit.intact
    idx = unit.index
    return Progress(bytes_done=progress.bytes_done + sign * idx.bytes * done,
                    bytes_total=progress.bytes_total + sign * idx.bytes,
                    files_done=progress.files_done + sign * idx.files * done,
                    files_total=progress.files_total + sign * idx.files,
                    verified=progress.verified + sign * verified, units=progress.units + sign)


def _with(positions: tuple[int, ...], p: int) -> tuple[int, ...]:
    i = bisect.bisect_left(positions, p)
    if i < len(positions) and positions[i] == p:
        return positions
    return (*positions[:i], p, *positions[i:])


def _without(positions: tuple[int, ...], p: int) -> tuple[int, ...]:
    i = bisect.bisect_left(positions, p)
    if i < len(positions) and positions[i] == p:
        return positions[:i] + positions[i + 1:]
    return positions


def refusal(comp: Component, state: ComponentState) -> Blocked | None:
    """The archive's index already shows the result cannot be what the manifest asks: stop before work."""
    if comp.classes is not None:
        missing = sorted(set(comp.classes) - {u.name for u in state.units})
        if missing:
            return Blocked(comp.name, reason=f"components.{comp.name}.classes: {', '.join(missing[:5])}"
                           f"{' ...' if len(missing) > 5 else ''} not in {comp.archive.name} "
                           f"({len(missing)} of {len(comp.classes)}); fix the list or the archive")
    if comp.expect is None:
        return None
    units = [u for u in state.units if comp.selected(u.name)]
    if comp.unpack == "class-tars":
        wanted, per_class = comp.expect, {u.name: u.index.files for u in units}
    else:  # a flat tree's classes are known only from its labels: the arrangement checks those
        wanted, per_class = Expect(files=comp.expect.files), {}
    off = expectations.problems(wanted, per_class, sum(u.index.files for u in units))
    if not off:
        return None
    shown = "; ".join(off[:5]) + (f"; and {len(off) - 5} more" if len(off) > 5 else "")
    return Blocked(comp.name, reason=f"components.{comp.name}.expect not met by {comp.archive.name}: {shown}")
