"""The reactor: plan, run actions in bounded pools, record, re-observe, plan again.

Pure decisions come from `core.planning`; how each action type runs comes from
`engine.steps.STEPS`. CPU-bound steps (hashing, tar parsing) run in worker
processes; downloads in threads; renames and deletes inline. After each step
the touched unit is observed again and the state re-planned (the planner's
ledgers follow the observation unit by unit, and it builds only the worker
steps the pool has room for), so a unit's next step starts while its bytes
are still in the page cache.

All the executor remembers of a unit is one frozen `StepState` per
(component, unit) key (kopf's HandlerState is the model): attempts, a retry
time, a failure, the step in flight, and since when it waits for the group
commit. Only keys the current plan still holds can delay or keep the loop
awake, so a component disabled while in backoff cannot stall convergence.

Durability is a group commit: verified units wait until one syncfs flushes all
of them, then a single durable journal transaction marks them VERIFIED; only
then may their tars be deleted.
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from datasetd import logs
from datasetd.config.manifest import Manifest
from datasetd.core.costs import space_needs
from datasetd.core.ledger import Ledger
from datasetd.core.model import (
    Action,
    Blocked,
    ComponentState,
    IndexArchive,
    Journal,
    Observed,
    ProveArchive,
    UnitAction,
    UnitState,
)
from datasetd.core.planning import ledgers, plan_ledgers
from datasetd.engine import digestlists
from datasetd.engine.archivesteps import discard_unproven
from datasetd.engine.groupcommit import GroupCommit, filesystems
from datasetd.engine.hands import Hands
from datasetd.engine.pools import kill_processes, pools
from datasetd.engine.reporting import Reporter
from datasetd.engine.steps import STEPS
from datasetd.engine.stepstate import Key, Outcome, StepState, after_manifest_edit, failures, outcome
from datasetd.errors import NoSpace, TemporaryError, classify, is_out_of_space
from datasetd.sources.base import Source
from datasetd.state.journal import JournalDB
from datasetd.state.observe import observe, observe_again
from datasetd.state.space import check_space, still_needed
from datasetd.state.status import StatusBoard

MAX_ATTEMPTS = 3
COMMIT_BATCH = 256  # verified units that force a group commit even while steps still run


class Executor:
    def __init__(self, manifest: Manifest, journal: JournalDB, board: StatusBoard, *,
                 workers: int | None = None, sources: Mapping[str, Source] | None = None,
                 stop: threading.Event | None = None, commit_every: float = 2.0,
                 on_round: Callable[[], None] = lambda: None) -> None:
        self.manifest = manifest
        self.journal = journal
        self.board = board
        self.workers = workers or manifest.daemon.workers
        self.stop = stop or threading.Event()
        self.commit_every = commit_every
        self.on_round = on_round  # called once per loop round (the daemon's heartbeat)
        self.log = logs.get()
        self.hands = Hands(manifest, journal, board, sources or {})
        self.hands.units_busy = self._units_busy
        self.observed: dict[str, ComponentState] = {}
        # what the planner knows of each component's units, advanced unit by unit as they are observed
        self.ledgers: dict[str, Ledger] = {}
        self.states: dict[Key, StepState] = {}
        self.futures: dict[cf.Future[Any], Key] = {}
        self.flusher: GroupCommit[Key] = GroupCommit()
        self.reporter = Reporter(board)
        self._new: tuple[Manifest, Mapping[str, Source] | None] | None = None
        self._pools_by_place: dict[str, cf.Executor] = {}
        self.futures_started = 0  # steps started in this run (none: a no-op)

    def reload(self, manifest: Manifest, sources: Mapping[str, Source] | None = None) -> None:
        """Switch to an edited manifest at the next step boundary (thread-safe).

        New or re-enabled components start; disabled or removed ones get no new
        steps and their downloads are told to stop. Nothing is deleted.
        """
        self._new = (manifest, sources)  # picked up within a second: the loop never waits longer

    def _take_new_manifest(self) -> None:
        new, self._new = self._new, None
        if new is None:
            return
        manifest, sources = new
        self.manifest = self.hands.manifest = manifest
        if sources is not None:
            self.hands.sources = sources
        self.board.reset(manifest)
        enabled = {c.name for c in manifest.enabled()}
        self.hands.stop_fetches_of({n for n in self.hands.fetch_stops if n not in enabled})
        self.states = after_manifest_edit(self.states, enabled)
        self.observed = dict(observe(manifest, self.journal).components)
        self.log.info("daemon.reloaded", manifest=str(manifest.path), sha256=manifest.sha256)

    def _state(self, key: Key) -> StepState:
        return self.states.get(key) or StepState()

    def _set(self, key: Key, **changes: Any) -> None:
        state = replace(self._state(key), **changes)
        if state == StepState():
            self.states.pop(key, None)
        else:
            self.states[key] = state

    # ---- entry -------------------------------------------------------------------------------

    def run(self) -> Outcome:
        self.log.info("apply.started", manifest=str(self.manifest.path), sha256=self.manifest.sha256,
                      workers=self.workers)
        observed = observe(self.manifest, self.journal)
        check_space(self.manifest, observed)
        self.observed = dict(observed.components)
        self._keep_fingerprints()
        digestlists.rewrite_lost(self.manifest, self.journal, (
            (name, u.name) for name, state in self.observed.items() for u in state.units
            if u.journal is not Journal.NONE))
        with pools(self.workers, self.stop) as by_place:
            self._pools_by_place = by_place
            try:
                self._loop()
            finally:
                if self.stop.is_set():
                    self.hands.stop_fetches()
                self._drain_on_stop()
                try:
                    self._commit(force=True)
                finally:
                    self.flusher.close()
        return self._outcome()

    def _keep_fingerprints(self, fresh: bool = False) -> None:
        """Record the directory fingerprints an observation took, so the next no-op is one stat a dir.

        `fresh`: observe again first (after a pass that wrote, the fingerprints taken right after
        each extraction were too recent to keep)."""
        observed = observe(self.manifest, self.journal).components if fresh else self.observed
        for name, state in observed.items():
            seen = {u.name: u.dirs_seen for u in state.units if u.dirs_seen is not None and u.intact}
            if seen:
                self.journal.record_dirs(name, seen)

    def _loop(self) -> None:
        while not self.stop.is_set():
            self._take_new_manifest()
            retry_at = self._submit_ready()
            self.on_round()
            if not self.futures and not self._awaiting_commit() and retry_at is None:
                return
            timeout = self._next_wakeup(retry_at)
            flush = self.flusher.future
            if not self.futures and flush is None:
                self.stop.wait(timeout)  # cf.wait returns at once on no futures: waiting there would spin
            waits = [*self.futures, *([flush] if flush is not None else [])]
            done, _ = cf.wait(waits, timeout=timeout, return_when=cf.FIRST_COMPLETED)
            for future in done:
                if future is not flush:
                    self._complete(future)
            self._commit()
            self._report()

    def _awaiting_commit(self) -> dict[Key, float]:
        """Verified units waiting for the group commit; none of a component in error (an archive whose
        digest broke its pin leaves its units unrecorded: the loop must not wait for them)."""
        failed = {k[0] for k, s in self.states.items() if s.failed is not None and not k[1]}
        return {k: s.verified_at for k, s in self.states.items()
                if s.verified_at is not None and k[0] not in failed}

    def _units_busy(self, component: str) -> list[UnitAction]:
        """The unit steps of `component` running now, or done and waiting for the group commit."""
        return [UnitAction(component, k[1]) for k, s in self.states.items()
                if k[0] == component and k[1] and s.busy]

    def _ledgers(self) -> dict[str, Ledger]:
        """The ledgers, brought up to what is observed now (each follows its component's units by
        identity: only units observed since the last call are planned again)."""
        self.ledgers = ledgers(self.manifest, self.observed, self.ledgers)
        return self.ledgers

    def _unit(self, key: Key) -> tuple[int, UnitState] | None:
        """The observed unit of a key and its position, by the ledger's positions (a search would walk
        every unit, for each unit waiting for the commit: 1,000 of them waiting on an archive's verdict)."""
        ledger = self._ledgers().get(key[0])
        if ledger is None:  # removed from the manifest meanwhile: what is still observed of it
            state = self.observed.get(key[0])
            return next(((p, u) for p, u in enumerate(state.units) if u.name == key[1]), None) if state else None
        p = ledger.positions.get(key[1])
        return (p, ledger.state.units[p]) if p is not None else None

    def _extracted(self, key: Key) -> bool:
        """Recorded EXTRACTED: verified by its step and not yet committed."""
        seen = self._unit(key)
        return seen is not None and seen[1].journal is Journal.EXTRACTED

    def _proven(self, component: str) -> bool:
        state = self.observed.get(component)
        return state is None or state.archive.proven

    def _next_wakeup(self, retry_at: float | None) -> float:
        now = time.monotonic()
        wake = min(retry_at if retry_at is not None else now + 1.0, now + 1.0)
        if self._awaiting_commit():
            wake = min(wake, now + self.commit_every)
        return max(0.0, wake - now)

    # ---- submit and complete -----------------------------------------------------------------

    def _submit_ready(self) -> float | None:
        """Start every planned step that may start; return the earliest retry among planned keys waiting."""
        now = time.monotonic()
        retry_at: float | None = None
        # A bounded queue: a unit's VerifyUnit then runs right behind its ExtractUnit, while its
        # bytes are in the page cache, and queued work items (VerifyUnit carries the unit's
        # whole file list) do not pile up in this process for the length of the archive.
        pooled = sum(self._place(s.running) == "worker" for s in self.states.values() if s.running is not None)
        busy = {k for k, s in self.states.items() if s.busy}
        held = {k for k, s in self.states.items()
                if s.failed is not None or (s.retry_at is not None and s.retry_at > now)}
        # The planner builds only the worker steps the pool has room for (and those held back).
        room = max(0, 2 * self.workers - pooled)
        for action in plan_ledgers(self.manifest, self._ledgers(), busy=busy, held=held, room=room):
            state = self._state(action.key)
            if state.busy or state.failed is not None or self._state((action.component, "")).failed is not None:
                continue
            if state.retry_at is not None and state.retry_at > now:
                retry_at = min(retry_at or state.retry_at, state.retry_at)
                continue
            if isinstance(action, Blocked):
                self._fail(action, action.reason)
                continue
            if self._place(action) == "worker":
                if pooled >= 2 * self.workers:
                    continue
                pooled += 1
            self._start(action)
        return retry_at

    @staticmethod
    def _place(action: Action) -> str:
        return type(action).runs_in

    def _start(self, action: Action) -> None:
        future: cf.Future[Any]
        try:
            fn, args = STEPS[type(action)].work(self.hands, action)
            pool = self._pools_by_place.get(self._place(action))
            if pool is not None:
                future = pool.submit(fn, *args)
            else:
                future = cf.Future()
                future.set_result(fn(*args))
        except Exception as exc:  # noqa: BLE001 - a step that cannot start (a size pin) fails like any step
            future = cf.Future()
            future.set_exception(exc)
        self._set(action.key, running=action, retry_at=None)
        self.futures[future] = action.key
        self.futures_started += 1

    def _complete(self, future: cf.Future[Any]) -> None:
        key = self.futures.pop(future)
        action = self._state(key).running
        assert action is not None
        self._set(key, running=None)
        if action.component not in self.manifest.components:
            self.states.pop(key, None)
            return  # removed from the manifest while it ran: its result stays on disk, unrecorded
        if isinstance(action, UnitAction) and action.component in self.hands.refused:
            # The archive's digest broke its pin while this unit was extracted from it: not recorded,
            # and the folder it made is removed (a bad archive leaves the tree as it found it).
            discard_unproven(self.hands, action)
            self._refresh(action)
            return
        verified = False
        try:
            verified = bool(STEPS[type(action)].record(self.hands, action, future.result()))
        except Exception as exc:  # noqa: BLE001 - classify decides; nothing escapes unlogged
            self._failed_step(action, exc)
        else:
            if self._state(key).attempts:
                self.board.update(action.component, retry=None)  # the retry worked: stop saying it is pending
            self._set(key, attempts=0, verified_at=time.monotonic() if verified else None, flushed=False)
        self._refresh(action, proven=verified)
        if isinstance(action, (IndexArchive, ProveArchive)) and self._state(key).failed is None:
            self._recheck_space(action)

    def _recheck_space(self, action: Action) -> None:
        """The index now knows the exact bytes and inodes: refuse before the first write."""
        try:
            check_space(self.manifest, Observed(self.observed))
        except NoSpace as e:
            self._fail(action, str(e))

    def _failed_step(self, action: Action, exc: BaseException) -> None:
        err = classify(exc, action.component, action.kind)
        attempts = self._state(action.key).attempts + 1
        if isinstance(err, TemporaryError) and attempts < MAX_ATTEMPTS:
            self._set(action.key, attempts=attempts, retry_at=time.monotonic() + err.delay)
            # The words a user reads in status, on the page and on the console, e.g.
            # "retrying in 60 s (attempt 2 of 3): Name or service not known".
            said = f"retrying in {err.delay:.3g} s (attempt {attempts + 1} of {MAX_ATTEMPTS}): {err}"
            self.board.update(action.component, retry=said)
            self.board.write(force=True)  # rare, and what a user looking now must see
            self.log.warning("step.retrying", component=action.component, step=action.kind, message=said,
                             delay=err.delay, attempt=attempts + 1, attempts=MAX_ATTEMPTS, error=str(err))
            self.journal.step(action.component, action.key[1], action.kind, "retry", str(err))
            return
        message = str(err)
        if is_out_of_space(exc):
            message += self._space_still_needed()
        self._fail(action, message)

    def _space_still_needed(self) -> str:
        return still_needed(space_needs(self.manifest, Observed(self.observed)))

    def _fail(self, action: Action, message: str) -> None:
        self._set(action.key, failed=message, retry_at=None)
        self.journal.step(action.component, action.key[1], action.kind, "failed", message)
        self.log.error("step.failed", component=action.component, unit=action.key[1] or None,
                       step=action.kind, error=message)
        self.board.update(action.component, phase="error", last_error=message)

    def _refresh(self, action: Action, proven: bool = False) -> None:
        """Observe what a step changed: its unit (`proven`: just read back by the step), or its component."""
        comp = self.manifest.components[action.component]
        unit = action.unit if isinstance(action, UnitAction) else None
        found = self._unit((comp.name, unit)) if unit is not None else None
        self.observed[comp.name] = observe_again(comp, self.journal, self.observed.get(comp.name), unit, proven,
                                                 at=found[0] if found is not None else None)

    # ---- group commit ------------------------------------------------------------------------

    def _commit(self, force: bool = False) -> None:
        """Record the batch whose flush returned; start the next one when it is due. `force` (the
        end of a run) waits for the flush in flight and flushes what is left, as does an idle loop."""
        self._record_flushed(wait=force)
        for key in self._awaiting_commit():
            if not self._extracted(key):
                self._set(key, verified_at=None, flushed=False)  # forgotten meanwhile (refused): not committed
        self._record_durable()
        if self.flusher.future is not None:
            return  # one flush at a time: units verified meanwhile wait for the next
        # A unit of an archive whose digest is still being checked is flushed like any other (its
        # bytes will not change), and recorded once the verdict is in: no flush is left for then.
        waiting = {k: t for k, t in self._awaiting_commit().items() if not self._state(k).flushed}
        if not waiting:
            return
        idle = not self.futures
        stale = time.monotonic() - min(waiting.values()) >= self.commit_every
        if not (force or idle or len(waiting) >= COMMIT_BATCH or stale):
            return
        # One flush for every unit in the batch (engine/groupcommit.py), off this thread.
        self.flusher.start(sorted(waiting), filesystems(self.manifest, {component for component, _ in waiting}))
        if force or idle:
            self._record_flushed(wait=True)  # nothing else to do meanwhile
            self._record_durable()

    def _record_flushed(self, wait: bool) -> None:
        """The batch whose syncfs returned: its extracted files and directory renames now survive
        power loss."""
        batch = self.flusher.finished(wait)
        for key in batch or ():
            if self._state(key).verified_at is not None and self._extracted(key):
                self._set(key, flushed=True)  # else forgotten or re-planned while it was flushed

    def _record_durable(self) -> None:
        """Record VERIFIED every flushed unit whose archive is proved, so its tars may be deleted
        (journal commit is synchronous=FULL)."""
        by_component: dict[str, list[str]] = {}
        for component, unit in sorted(self._awaiting_commit()):
            if self._state((component, unit)).flushed and self._proven(component):
                self._set((component, unit), verified_at=None, flushed=False)
                by_component.setdefault(component, []).append(unit)
        for name, units in by_component.items():
            self.journal.mark_verified(name, units)
            for unit in units:
                self.journal.step(name, unit, "Commit", "ok")
                self.log.info(self.hands.event(name, "verified"), component=name, unit=unit)
                self._committed(name, unit)

    def _committed(self, component: str, unit: str) -> None:
        """Observe a unit again after its commit, listing its folder only where a step may follow.

        A delete (its loose tar, or the archive once every unit is verified) or an arrangement must
        be preceded by a fresh look at the folder. A unit with none was listed when its step was
        recorded, and the commit changed its journal state alone: setting that spares a stat per file."""
        comp = self.manifest.components[component]
        state = self.observed.get(component)
        found = self._unit((component, unit))
        follows = found is None or found[1].loose_tar is not None or comp.arrange is not None or (
            comp.downloaded and not comp.keep_archive)
        if state is None or found is None or follows:
            self._refresh(UnitAction(component, unit))
            return
        p, seen = found
        verified = replace(seen, journal=Journal.VERIFIED)
        self.observed[component] = replace(state, units=(*state.units[:p], verified, *state.units[p + 1:]))

    # ---- reporting -----------------------------------------------------------------------------

    def failures(self) -> dict[str, str]:
        """component -> its first failure message."""
        return failures(self.states)

    def _report(self) -> None:
        running = [s.running for s in self.states.values() if s.running is not None]
        self.reporter.show(self.manifest, self.observed, running, self.failures(), self._ledgers())

    def _drain_on_stop(self) -> None:
        if not self.stop.is_set():
            return
        self._abandon_proofs()
        deadline = time.monotonic() + self.manifest.daemon.stop_timeout
        while self.futures and time.monotonic() < deadline:
            done, _ = cf.wait(list(self.futures), timeout=max(0.0, deadline - time.monotonic()),
                              return_when=cf.FIRST_COMPLETED)
            for future in done:
                self._complete(future)
        self.log.info("apply.stopped", abandoned=len(self.futures))

    def _abandon_proofs(self) -> None:
        """A stop does not wait for a proof pass (minutes at full size): it only yields an index, so
        its process is killed and the pass runs again next time; the units it gates stay unrecorded."""
        for future, key in list(self.futures.items()):
            action = self._state(key).running
            if action is not None and self._place(action) == "process":
                self.futures.pop(future)
                self._set(key, running=None)
        kill_processes(self._pools_by_place.get("process"))

    def _outcome(self) -> Outcome:
        self._report()
        failed, stopped = self.failures(), self.stop.is_set()
        if not failed and not stopped and self.futures_started:
            self._keep_fingerprints(fresh=True)
        out = outcome(self.manifest, self.observed, failed, stopped)
        self.board.state = "stopped" if out.stopped else ("converged" if out.ok else "failed")
        self.board.write(force=True)
        self.log.info("apply.converged" if out.ok else ("apply.stopped" if out.stopped else "apply.failed"),
                      ready=out.ready, failed=out.failed or None)
        return out
