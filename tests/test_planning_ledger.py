"""The planner's per-round work at 1,000+ units (issue 15), and the rules it must keep while it
skips busy units and stops at the pool's room: pure planner, pure inputs, counted work, no timing."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import pytest

import datasetd.core.ledger as ledger_module
from datasetd.config.manifest import Manifest
from datasetd.config.parsing import parse
from datasetd.core.ledger import Ledger, follow
from datasetd.core.model import (
    FLAT,
    UNPROVEN,
    Action,
    ArchiveState,
    Blocked,
    ComponentState,
    DeleteArchive,
    ExtractUnit,
    IndexArchive,
    Journal,
    MarkProcessed,
    Observed,
    UnitIndex,
    UnitState,
    VerifyUnit,
)
from datasetd.core.planning import Key, is_ready, ledgers, plan, plan_ledgers
from planner_cases import ROOT, SHA, manifest, pinned_val

ARCHIVE = ArchiveState(present=True, size=100, verified=True, indexed=True)
DONE = {"folder": True, "intact": True, "journal": Journal.VERIFIED}


def downloaded(units: int) -> tuple[Manifest, ComponentState]:
    m = parse(f"""
version = 1
root = "{ROOT}"
[components.train]
source = "http"
url = "https://example.org/train.tar"
file = "downloads/train.tar"
unpack = "class-tars"
into = "train"
keep_archive = false
""".encode(), Path("/m.toml"))
    return m, ComponentState(archive=ARCHIVE, units=fresh_units(units), archive_sha256=SHA)


def fresh_units(n: int) -> tuple[UnitState, ...]:
    return tuple(UnitState(index=UnitIndex(f"n{i:08d}", offset=512 * (1 + 21 * i), size=512 * 20,
                                           sha256="b" * 64, files=3, dirs=0, bytes=9000)) for i in range(n))


def with_unit(state: ComponentState, name: str, **changes: object) -> ComponentState:
    """What the executor's observation does after a step: one UnitState object replaced."""
    return replace(state, units=tuple(replace(u, **changes) if u.name == name else u  # type: ignore[arg-type]
                                      for u in state.units))


class Counted:
    """Counts plan_unit calls (the planner's per-unit work) made through the ledger."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = ledger_module.plan_unit  # type: ignore[attr-defined]

        def counting(*args: object) -> object:
            self.calls += 1
            return real(*args)  # type: ignore[arg-type]
        monkeypatch.setattr(ledger_module, "plan_unit", counting)


def simulated_apply(m: Manifest, state: ComponentState, workers: int = 2,
                    check_every: int = 0) -> tuple[list[str], ComponentState, int]:
    """The executor's loop over pure inputs: each round, plan with the keys in flight and the room
    left; start what may start; then one step completes (the oldest) and its unit is observed again.
    Returns the units in the order their extraction started, the last state and the rounds."""
    running: list[Action] = []
    extracted_order: list[str] = []
    kept: dict[str, Ledger] = {}
    rounds = 0
    while True:
        rounds += 1
        kept = ledgers(m, {"train": state}, kept)
        if check_every and rounds % check_every == 0:
            assert kept["train"] == follow(None, m.components["train"], state)  # incremental == scratch
        busy: set[Key] = {a.key for a in running}
        room = 2 * workers - len(running)
        planned = plan_ledgers(m, kept, busy=busy, room=room)
        workers_planned = [a for a in planned if type(a).runs_in == "worker" and a.key[1]]
        assert len(workers_planned) <= room
        for action in planned:
            if isinstance(action, ExtractUnit):
                extracted_order.append(action.unit)
            running.append(action)
        if not running:
            return extracted_order, state, rounds
        done = running.pop(0)
        if isinstance(done, ExtractUnit):
            state = with_unit(state, done.unit, folder=True, intact=True, journal=Journal.EXTRACTED)
        elif isinstance(done, VerifyUnit):
            state = with_unit(state, done.unit, journal=Journal.VERIFIED)
        elif isinstance(done, DeleteArchive):
            state = replace(state, archive=replace(state.archive, present=False))
        else:
            raise AssertionError(f"unexpected step {done}")


def test_a_1200_unit_apply_plans_each_unit_a_few_times_not_once_a_round(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before issue 15 every round planned every unit still to do (1,000 classes: 1.1 M plan_unit
    calls over an apply); now a round plans the units whose observed state changed."""
    n = 1200
    m = manifest()
    counted = Counted(monkeypatch)
    order, state, rounds = simulated_apply(m, ComponentState(archive=ARCHIVE, units=fresh_units(n),
                                                             archive_sha256=SHA))
    assert is_ready(m.components["train"], state)
    assert order == [u.name for u in fresh_units(n)]  # the archive's order, front to back
    assert rounds > 2 * n  # an extraction and a verification for each unit
    # one build (n) plus one call for each unit change (two a unit), plus the is_ready check (n)
    assert counted.calls <= 4 * n + 10, counted.calls


def test_incremental_ledger_equals_the_one_built_from_scratch_through_an_apply() -> None:
    order, _, _ = simulated_apply(manifest(), ComponentState(archive=ARCHIVE, units=fresh_units(300),
                                                             archive_sha256=SHA), check_every=7)
    assert len(order) == 300


def test_random_unit_changes_keep_the_ledger_equal_to_a_fresh_one() -> None:
    m = manifest(train='classes = ["n00000001", "n00000003", "n00000004", "n00000007", "n00000011"]')
    comp = m.components["train"]
    rng = random.Random(15)
    units = list(fresh_units(12))
    state = ComponentState(archive=ARCHIVE, units=tuple(units), archive_sha256=SHA)
    kept = follow(None, comp, state)
    choices: list[dict[str, object]] = [
        {"folder": True, "intact": True, "journal": Journal.EXTRACTED}, dict(DONE),
        {"folder": True, "intact": False, "journal": Journal.VERIFIED}, {"folder": True},
        {"loose_tar": "W.tar", "loose_tar_ok": True, **DONE}, {"folder": False, "journal": Journal.NONE},
    ]
    for _ in range(400):
        p = rng.randrange(len(units))
        units[p] = replace(fresh_units(12)[p], **rng.choice(choices))  # type: ignore[arg-type]
        if rng.random() < 0.1:
            units[p] = replace(units[p], index=replace(units[p].index, problem="hostile member ../x"))
        state = replace(state, units=tuple(units))
        kept = follow(kept, comp, state)
        assert kept == follow(None, comp, state)


def test_only_room_worker_steps_are_built_busy_skipped_held_not_counted_inline_all() -> None:
    """Room bounds worker unit steps, in archive order; busy keys are not planned; a held key (failed
    or waiting for a retry) is given without taking room; a MarkProcessed or a Blocked unit past
    the room is still given (they need no worker)."""
    m = manifest()
    units = list(fresh_units(10))
    units[8] = replace(units[8], loose_tar="n00000008.tar", loose_tar_ok=True, folder=True, intact=True,
                       journal=Journal.EXTRACTED)
    units[9] = replace(units[9], index=replace(units[9].index, problem="n00000009.tar: hostile member ../x"))
    state = Observed({"train": ComponentState(archive=ARCHIVE, units=tuple(units), archive_sha256=SHA)})
    actions = plan(m, state, busy={("train", "n00000000")}, held={("train", "n00000001")}, room=2)
    assert [(type(a).__name__, a.key[1]) for a in actions] == [
        ("ExtractUnit", "n00000001"), ("ExtractUnit", "n00000002"), ("ExtractUnit", "n00000003"),
        ("MarkProcessed", "n00000008"), ("Blocked", "n00000009")]
    assert isinstance(actions[3], MarkProcessed) and isinstance(actions[4], Blocked)
    everything = plan(m, state)
    assert [a.key[1] for a in everything] == [f"n{i:08d}" for i in range(10)]


def test_room_is_shared_across_components_and_a_failed_component_takes_none() -> None:
    m = manifest(extra=pinned_val("class-tars"))
    comps = {name: ComponentState(archive=ARCHIVE, units=fresh_units(5), archive_sha256=SHA)
             for name in ("train", "val")}
    got = [a.key for a in plan(m, Observed(comps), room=3)]
    assert got == [("train", "n00000000"), ("train", "n00000001"), ("train", "n00000002")]
    # train in error: the executor starts none of its units, so they must not take val's room
    got = [a.key for a in plan(m, Observed(comps), held={("train", "")}, room=3)]
    assert got == [("val", "n00000000"), ("val", "n00000001"), ("val", "n00000002")]


@pytest.mark.parametrize("case", ["running", "awaiting commit", "still to do past the room"])
def test_delete_archive_never_while_a_unit_is_busy_or_to_do(case: str) -> None:
    """With busy units skipped and the room used, "no actions" no longer means "all done": the
    DeleteArchive rule looks at every unit and every key in flight."""
    m, state = downloaded(1000)
    verified = tuple(replace(u, **DONE) for u in state.units)  # type: ignore[arg-type]
    all_done = replace(state, units=verified)
    assert [type(a) for a in plan(m, Observed({"train": all_done}), room=4)] == [DeleteArchive]
    busy: set[Key] = set()
    if case == "running":  # observed as before its step (a re-verification, say) while it runs
        busy = {("train", "n00000500")}
        state = with_unit(all_done, "n00000500", journal=Journal.EXTRACTED)
    elif case == "awaiting commit":  # verified, waiting for the group commit: EXTRACTED until then
        busy = {("train", "n00000999")}
        state = with_unit(all_done, "n00000999", journal=Journal.EXTRACTED)
    else:
        state = with_unit(with_unit(all_done, "n00000998", folder=False, intact=False, journal=Journal.NONE),
                          "n00000999", folder=False, intact=False, journal=Journal.NONE)
    actions = plan(m, Observed({"train": state}), busy=busy, room=0)
    assert not any(isinstance(a, DeleteArchive) for a in actions), actions
    assert not is_ready(m.components["train"], state)


def test_delete_archive_waits_for_a_busy_key_even_when_every_unit_is_observed_done() -> None:
    m, state = downloaded(3)
    all_done = replace(state, units=tuple(replace(u, **DONE) for u in state.units))  # type: ignore[arg-type]
    assert plan(m, Observed({"train": all_done}), busy={("train", "n00000001")}) == []


def test_a_dependency_is_ready_only_when_every_unit_converged_whatever_the_room() -> None:
    m = manifest(extra=pinned_val("tar", 'after = ["train"]'))
    units = tuple(replace(u, **DONE) for u in fresh_units(1000))  # type: ignore[arg-type]
    last_to_do = replace(units[-1], folder=False, intact=False, journal=Journal.NONE)
    train = ComponentState(archive=ARCHIVE, units=(*units[:-1], last_to_do), archive_sha256=SHA)
    val = ComponentState(archive=ArchiveState(present=True, size=100))
    actions = plan(m, Observed({"train": train, "val": val}), busy={("train", "n00000999")}, room=0)
    assert actions == []  # train's last unit is busy; val waits for it
    assert not is_ready(m.components["train"], train)
    done = replace(train, units=units)
    actions = plan(m, Observed({"train": done, "val": val}), room=0)
    assert [type(a) for a in actions] == [IndexArchive] and actions[0].component == "val"


def test_while_proving_the_inode_budget_counts_busy_units_and_the_room_stops_the_walk() -> None:
    m = manifest()
    units = fresh_units(6)  # each needs 20 + 1 inodes at most
    pending = ArchiveState(present=True, size=100, verified=True, indexed=True, proven=False)
    state = ComponentState(archive=pending, units=units, archive_sha256=f"{UNPROVEN}x", inodes_free=4 * 21)

    def started(**kw: object) -> list[str]:
        actions = plan(m, Observed({"train": state}), **kw)  # type: ignore[arg-type]
        return [a.key[1] or type(a).__name__ for a in actions]

    assert started() == ["ProveArchive", "n00000000", "n00000001", "n00000002", "n00000003"]
    # running units have nothing recorded yet: their inodes still count against what is free
    assert started(busy={("train", "n00000000"), ("train", "n00000001"), ("train", "")}) == ["n00000002", "n00000003"]
    assert started(room=1) == ["ProveArchive", "n00000000"]
    assert started(room=1, held={("train", "n00000000")}) == ["ProveArchive", "n00000000", "n00000001"]
    assert started(held={("train", "")}, room=4) == ["ProveArchive"]  # the proof failed: nothing starts


def test_a_flat_component_plans_through_the_ledger_too() -> None:
    m = parse(f'version = 1\nroot = "{ROOT}"\n[components.val]\nsource = "file"\npath = "v.tar"\n'
              f'unpack = "tar"\ninto = "val"\n'.encode(), Path("/m.toml"))
    flat = UnitState(index=UnitIndex(FLAT, 0, 100, "", 1, 0, 50))
    state = Observed({"val": ComponentState(archive=ARCHIVE, units=(flat,), archive_sha256=SHA)})
    assert [type(a) for a in plan(m, state)] == [ExtractUnit]
    assert plan(m, state, busy={("val", FLAT)}) == []
    assert [type(a) for a in plan(m, state, room=0)] == []
    done = Observed({"val": ComponentState(archive=ARCHIVE, units=(replace(flat, **DONE),),  # type: ignore[arg-type]
                                           archive_sha256=SHA)})
    assert plan(m, done) == [] and is_ready(m.components["val"], done.components["val"])
