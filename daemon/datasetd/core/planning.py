"""The planner: a pure function from (manifest, observed state) to the next actions.

Level-triggered (kopf's model): it never remembers what it did; it looks at
what is, and says the next step for each unit. The class-tar protocol lives in
`core.unitplan` as a table (design.md); `core.ledger` keeps its answer for each
unit. The executor re-observes after every step and asks again, so a crash
anywhere resumes at the right step. It asks with what it knows besides the disk,
as pure inputs: the keys in flight (`busy`: not planned again), the keys that may
not start now (`held`: failed, or waiting for a retry), and the room left in the
worker pool, so a round builds only the unit steps that may start.
"""

from __future__ import annotations

from collections.abc import Mapping, Set

from datasetd.config.manifest import Component, Manifest
from datasetd.core.ledger import Ledger, follow
from datasetd.core.model import (
    Action,
    ArchiveState,
    Blocked,
    ComponentState,
    DeleteArchive,
    ExtractUnit,
    Fetch,
    IndexArchive,
    Observed,
    ProveArchive,
)
from datasetd.core.unitplan import loose_path as loose_path
from datasetd.core.unitplan import plan_unit as plan_unit
from datasetd.core.unitplan import selected_units as selected_units
from datasetd.core.unitplan import unit_done as unit_done
from datasetd.core.unitplan import unit_paths as unit_paths

Key = tuple[str, str]  # (component, unit); unit "" for component-level steps
NOTHING: frozenset[Key] = frozenset()


def plan(manifest: Manifest, observed: Observed, *, busy: Set[Key] = NOTHING, held: Set[Key] = NOTHING,
         room: int | None = None) -> list[Action]:
    """Every action that can start now, in dependency order (from scratch: `plan_ledgers` is the
    same from ledgers kept up to date, see `ledgers`)."""
    return plan_ledgers(manifest, ledgers(manifest, observed.components), busy=busy, held=held, room=room)


def ledgers(manifest: Manifest, observed: Mapping[str, ComponentState],
            previous: Mapping[str, Ledger] | None = None) -> dict[str, Ledger]:
    """The ledger of each observed component of the manifest, following `previous` where it has one."""
    previous = previous or {}
    return {name: follow(previous.get(name), manifest.components[name], state)
            for name, state in observed.items() if name in manifest.components}


def plan_ledgers(manifest: Manifest, by_name: Mapping[str, Ledger], *, busy: Set[Key] = NOTHING,
                 held: Set[Key] = NOTHING, room: int | None = None) -> list[Action]:
    """`busy` keys are left out; at most `room` unit steps that run in a worker and are not `held`
    are given (in archive order); every other action that may start is."""
    actions: list[Action] = []
    for comp in manifest.enabled():
        ledger = by_name.get(comp.name)
        if ledger is None or ledger.comp is not comp:
            continue
        if any(not ledger_ready(by_name.get(d), manifest.components[d]) for d in comp.after):
            continue
        planned = plan_ledger(ledger, busy=busy, held=held, room=room)
        if room is not None:
            room -= sum(type(a).runs_in == "worker" and a.key not in held and a.key[1] != ""
                        for a in planned)
        actions.extend(planned)
    return actions


def is_ready(comp: Component, state: ComponentState | None) -> bool:
    """Converged: the component's result is on disk, verified, and nothing is left to clean."""
    return state is not None and ledger_ready(follow(None, comp, state), comp)


def ledger_ready(ledger: Ledger | None, comp: Component) -> bool:
    if ledger is None or ledger.comp is not comp or not comp.enabled:
        return False
    archive = ledger.state.archive
    if comp.unpack == "none":
        return archive.present and archive.verified
    return (archive.indexed and archive.proven and ledger.refusal is None and ledger.idle
            and not _may_delete_archive(comp, archive))


def plan_component(comp: Component, state: ComponentState) -> list[Action]:
    return plan_ledger(follow(None, comp, state))


def plan_ledger(ledger: Ledger, *, busy: Set[Key] = NOTHING, held: Set[Key] = NOTHING,
                room: int | None = None) -> list[Action]:
    comp, state = ledger.comp, ledger.state
    archive = state.archive
    if comp.unpack == "none":
        if archive.present and archive.verified:
            return []
        return _free([_archive_step(comp, archive)], busy)
    if not archive.indexed:
        return _free([_archive_step(comp, archive)], busy)
    if not archive.proven:
        return _while_proving(ledger, busy, held, room)
    if ledger.refusal is not None:
        return [ledger.refusal]
    if (comp.name, "") in held:
        room = 0  # the component failed (or waits to retry): none of its units start meanwhile
    actions = [ledger.actions[p] for p in sorted((*ledger.inline, *_first(ledger, busy, held, room)))]
    units: list[Action] = [a for a in actions if a is not None and a.key not in busy]
    if ledger.needs_archive:
        units.extend(_free([_archive_step(comp, archive)], busy))
    if ledger.idle and _may_delete_archive(comp, archive) and not any(k[0] == comp.name for k in busy):
        # every unit verified and committed, none running: only then may the archive go
        units.extend(_free([DeleteArchive(comp.name, path=comp.archive)], busy))
    return units


def _first(ledger: Ledger, busy: Set[Key], held: Set[Key], room: int | None) -> list[int]:
    """The first `room` positions whose worker step may start (not busy, not held), with the held
    ones met before them: the executor decides what a held one does to its retry time."""
    out: list[int] = []
    taken = 0
    name = ledger.comp.name
    for p in ledger.worker:
        if room is not None and taken >= room:
            break
        key = (name, ledger.state.units[p].name)
        if key in busy:
            continue
        out.append(p)
        taken += key not in held
    return out


def _free(actions: list[Action], busy: Set[Key]) -> list[Action]:
    return [a for a in actions if a.key not in busy]


def _while_proving(ledger: Ledger, busy: Set[Key], held: Set[Key], room: int | None) -> list[Action]:
    """The outer headers are indexed, the full pass not yet: run it (ProveArchive), and meanwhile
    extract every unit that has nothing on disk, read in place. What would replace, adopt, rename
    or delete anything waits for the verdict, and no unit is committed verified before it (the
    executor's group commit): a bad archive forgets and removes only folders made meanwhile.

    Members are not counted yet, so the inode check cannot have run: a class tar of n bytes holds
    at most n // 512 entries (a header each), and units start only while those bounds, summed over
    every unit not yet extracted up to this one (running ones included), fit in the free inodes.
    The exact check follows the verdict, as before; a full disk is never found half-way."""
    comp, state = ledger.comp, ledger.state
    actions = _free([ProveArchive(comp.name, path=comp.archive)], busy)
    if (comp.name, "") in held:
        room = 0  # the proof failed (or waits to retry): no unit starts meanwhile
    if comp.expect is not None or comp.classes is not None:
        return actions  # what they refuse is known from the full index only: no work before it
    budget = state.inodes_free if state.inodes_free is not None else 0
    taken = 0
    for p in ledger.fresh:  # not extracted: extracted ones' inodes are taken, and counted in what is free
        if room is not None and taken >= room:
            break
        budget -= state.units[p].index.size // 512 + 1
        if budget < 0:
            break
        action = ledger.actions[p]
        if (isinstance(action, ExtractUnit) and not action.replace and not action.origin.loose
                and action.key not in busy):
            actions.append(action)
            taken += action.key not in held
    return actions


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


