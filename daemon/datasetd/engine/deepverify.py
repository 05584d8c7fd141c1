"""Deep verification: re-read every recorded unit and compare it with its record.

One loop serves `datasetd verify` (a pool of `workers`, as fast as the disk goes)
and the daemon's scheduled pass (one background worker, nice'd and paced to a
byte rate, stoppable). A unit that differs from its record loses the record: the
planner then compares it with its tar or re-extracts it; the tar was never
deleted before the record was made.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.pool
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from datasetd import logs
from datasetd.archive.verify import Proof, reprove_folder
from datasetd.config.manifest import Manifest
from datasetd.core.model import Journal
from datasetd.core.planning import selected_units, unit_paths
from datasetd.state.journal import JournalDB
from datasetd.state.observe import observe


@dataclass(frozen=True)
class RecordedUnit:
    component: str
    name: str
    folder: Path
    bytes: int


@dataclass
class Tally:
    problems: list[str] = field(default_factory=list)
    checked: int = 0  # units re-read to the end
    mismatched: int = 0  # of those, units that differ from their record


@dataclass(frozen=True)
class Pace:
    """How a pass shares the machine: worker count, their initializer, and a byte-rate cap."""

    workers: int
    initializer: Callable[[], None] | None = None
    max_rate: float | None = None  # bytes/s averaged per unit; None = as fast as the disk goes


def recorded_units(manifest: Manifest, journal: JournalDB,
                   names: list[str] | None = None) -> tuple[list[RecordedUnit], list[RecordedUnit]]:
    """What deep verification re-hashes (units the journal vouches for), and folders it has no record of."""
    observed = observe(manifest, journal)
    comps = manifest.enabled() if names is None else [manifest.components[n] for n in names]
    recorded: list[RecordedUnit] = []
    unrecorded: list[RecordedUnit] = []
    for comp in comps:
        state = observed.components.get(comp.name)
        if state is None or comp.unpack == "none":
            continue
        for u in state.units:
            unit = RecordedUnit(comp.name, u.name, unit_paths(comp, u.name).folder, u.index.bytes)
            if u.journal is not Journal.NONE:
                recorded.append(unit)
            elif u.folder:
                unrecorded.append(unit)
    return recorded, unrecorded


def account_for_manifest(manifest: Manifest, journal: JournalDB,
                         names: list[str]) -> tuple[list[RecordedUnit], list[str]]:
    """What `datasetd verify` re-hashes, and every expected unit it cannot vouch for.

    Answers for the manifest, not for the journal: each named component's units
    come from its archive's index; a unit missing, never extracted or unrecorded
    is a problem, and so is a component whose archive cannot be matched to its
    index (changed, replaced, or the journal lost): its units are then unknown,
    and the ones the journal still records are re-hashed anyway.
    """
    observed = observe(manifest, journal)
    recorded: list[RecordedUnit] = []
    problems: list[str] = []
    for comp in (manifest.components[n] for n in names):
        state = observed.components[comp.name]
        if comp.unpack == "none":
            if not state.archive.present:
                problems.append(f"{comp.archive}: missing (component {comp.name}); run apply")
            continue
        if not state.archive.indexed:
            problems.append(f"{comp.archive}: not matched to an index (component {comp.name}: never applied, "
                            "archive changed or journal lost), so its units cannot be proved; run apply")
            for name, row in sorted(journal.units(comp.name).items()):
                recorded.append(RecordedUnit(comp.name, name, unit_paths(comp, name).folder, row.bytes))
            continue
        for u in selected_units(comp, state):  # a `classes` subset expects only its own folders
            folder = unit_paths(comp, u.name).folder
            if u.journal is not Journal.NONE:
                recorded.append(RecordedUnit(comp.name, u.name, folder, u.index.bytes))
            elif u.folder:
                problems.append(f"{folder}: no record in the journal (unverified)")
            elif u.index.problem:
                problems.append(f"{folder}: not extracted ({u.index.problem})")
            else:
                problems.append(f"{folder}: missing (never extracted); run apply")
    return recorded, problems


def record_verification(journal: JournalDB, unit: RecordedUnit, problems: list[str], forget: bool = True) -> None:
    """Log the outcome; with `forget`, a mismatched unit loses its record so the next pass repairs it."""
    log = logs.get()
    if not problems:
        log.debug("verify.clean", component=unit.component, unit=unit.name)
        return
    log.error("verify.mismatch", component=unit.component, unit=unit.name, problems=len(problems), first=problems[0])
    if forget:
        journal.forget_unit(unit.component, unit.name)
    journal.step(unit.component, unit.name, "DeepVerify", "mismatch", problems[0])


def verify_units(journal: JournalDB, units: list[RecordedUnit], pace: Pace, stop: threading.Event,
                 beat: Callable[[], None] = lambda: None, forget: bool = True) -> Tally:
    """Re-hash `units` (at most `pace.workers` at once).

    Stops early when `stop` is set; `beat` is called at least once a second as a sign of life.
    """
    tally = Tally()
    with _pool(pace, stop) as pool:
        window = max(1, pace.workers)
        queue = iter(units)
        running: list[tuple[RecordedUnit, multiprocessing.pool.AsyncResult[Proof], float]] = []
        while not stop.is_set():
            while len(running) < window and (unit := next(queue, None)) is not None:
                records = journal.files(unit.component, unit.name)
                stats = journal.file_stats(unit.component, unit.name)  # which directories it had
                running.append((unit, pool.apply_async(reprove_folder, (unit.folder, records, stats)),
                                time.monotonic()))
            if not running:
                break
            unit, pending, started = running.pop(0)
            proof = _wait(pending, unit, stop, beat)
            if proof is None:
                break
            found, fresh = proof
            if fresh is not None:  # proved now: the next delete needs only a stat per file
                journal.record_stats(unit.component, unit.name, fresh)
            tally.checked += 1
            tally.mismatched += bool(found)
            tally.problems.extend(found)
            record_verification(journal, unit, found, forget)
            _pace(pace, unit.bytes, started, stop, beat)
    tally.problems.sort()
    return tally


def _wait(pending: multiprocessing.pool.AsyncResult[Proof], unit: RecordedUnit, stop: threading.Event,
          beat: Callable[[], None]) -> Proof | None:
    """The unit's problems and fresh fingerprint, or None when a stop came first."""
    while True:
        try:
            found: Proof = pending.get(timeout=1.0)
            break
        except multiprocessing.TimeoutError:
            beat()  # waiting on a live worker is a sign of life, however slow the disk
            if stop.is_set():
                return None
        except OSError as exc:
            found = ([f"{unit.folder}: cannot read ({exc.strerror or exc})"], None)
            break
    beat()
    return None if stop.is_set() else found


def _pace(pace: Pace, nbytes: int, started: float, stop: threading.Event, beat: Callable[[], None]) -> None:
    if pace.max_rate is None:
        return
    until = started + nbytes / pace.max_rate
    while not stop.is_set() and (left := until - time.monotonic()) > 0:
        stop.wait(min(left, 1.0))
        beat()


@contextlib.contextmanager
def _pool(pace: Pace, stop: threading.Event) -> Iterator[multiprocessing.pool.Pool]:
    pool = multiprocessing.get_context("fork").Pool(max(1, pace.workers), initializer=pace.initializer)
    try:
        yield pool
    finally:
        if stop.is_set():
            pool.terminate()  # reading only: abandoning a verification loses nothing
        else:
            pool.close()
        pool.join()
