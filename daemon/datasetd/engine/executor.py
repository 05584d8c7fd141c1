"""The reactor: plan, run actions in a bounded pool, record, re-observe, plan again.

Pure decisions come from `planning`; this module only runs them. CPU-bound
steps (hashing, tar parsing) run in worker processes; downloads in threads;
renames and deletes inline. After each step the touched unit is observed
again and the whole (in-memory) state re-planned, so a unit's next step
starts while its bytes are still in the page cache.

Durability is a group commit: verified units wait in `pending_commit` until
one syncfs flushes all of them, then a single durable journal transaction
marks them VERIFIED; only then may their tars be deleted.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import errno
import multiprocessing
import signal
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from datasetd import logs, platform
from datasetd.config.manifest import Manifest
from datasetd.core.model import (
    Action,
    AdoptUnit,
    Blocked,
    ComponentState,
    ExtractUnit,
    IndexArchive,
    Observed,
    UnitAction,
    VerifyUnit,
)
from datasetd.core.planning import is_ready, plan, space_needs
from datasetd.core.summary import summarize
from datasetd.engine.steps import StepRunner, classify
from datasetd.errors import NoSpace, TemporaryError
from datasetd.sources.base import Source
from datasetd.state.journal import JournalDB
from datasetd.state.observe import observe, observe_component, observe_unit, space_report
from datasetd.state.status import StatusBoard

MAX_ATTEMPTS = 3
_POOLED = (IndexArchive, ExtractUnit, AdoptUnit, VerifyUnit)  # the steps run in worker processes


@dataclass
class Outcome:
    ready: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # component -> first error
    stopped: bool = False

    @property
    def ok(self) -> bool:
        return not self.failed and not self.stopped


def init_worker() -> None:
    # Workers die with the coordinator: a SIGKILLed apply must not leave a worker
    # writing into a .partial dir that the next run is about to clear.
    platform.die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the coordinator decides how to stop


class Executor:
    def __init__(self, manifest: Manifest, journal: JournalDB, board: StatusBoard, *,
                 workers: int | None = None, sources: Mapping[str, Source] | None = None,
                 stop: threading.Event | None = None, commit_every: float = 2.0) -> None:
        self.manifest = manifest
        self.journal = journal
        self.board = board
        self.workers = workers or manifest.daemon.workers
        self.stop = stop or threading.Event()
        # the fetches share the executor's stop: a shutdown stops downloads too
        self.commit_every = commit_every
        self.log = logs.get()
        self.steps = StepRunner(manifest, journal, board, sources or {})
        self.observed: dict[str, ComponentState] = {}
        self.inflight: dict[cf.Future[Any], Action] = {}
        self.failed: dict[tuple[str, str], str] = {}
        self.attempts: dict[tuple[str, str], int] = {}
        self.delayed: dict[tuple[str, str], float] = {}
        self.pending_commit: dict[str, list[tuple[str, float]]] = {}
        self._last_progress = time.monotonic()
        self._new_manifest: Manifest | None = None

    def reload(self, manifest: Manifest) -> None:
        """Switch to an edited manifest at the next step boundary (thread-safe).

        New or re-enabled components start; disabled or removed ones get no new
        steps and their downloads are told to stop. Nothing is deleted.
        """
        self._new_manifest = manifest  # picked up within a second: the loop never waits longer

    def _take_new_manifest(self) -> None:
        manifest, self._new_manifest = self._new_manifest, None
        if manifest is None:
            return
        self.manifest = manifest
        self.steps.manifest = manifest
        self.board.reset(manifest)
        for name in list(self.steps.fetch_stops):
            comp = manifest.components.get(name)
            if comp is None or not comp.enabled:
                self.steps.fetch_stops[name].set()
        self.failed.clear()
        self.attempts.clear()
        self.observed = dict(observe(manifest, self.journal).components)
        self.log.info("daemon.reloaded", manifest=str(manifest.path), sha256=manifest.sha256)

    # ---- entry -------------------------------------------------------------------------------

    def run(self) -> Outcome:
        self.log.info("apply.started", manifest=str(self.manifest.path), sha256=self.manifest.sha256,
                      workers=self.workers)
        observed = observe(self.manifest, self.journal)
        check_space(self.manifest, observed)
        self.observed = dict(observed.components)
        with self._pools() as (procs, threads):
            self.steps.procs, self.steps.threads = procs, threads
            try:
                self._loop()
            finally:
                if self.stop.is_set():
                    self.steps.stop_fetches()
                self._drain_on_stop()
                self._commit(force=True)
        return self._outcome()

    @contextlib.contextmanager
    def _pools(self) -> Iterator[tuple[cf.ProcessPoolExecutor, cf.ThreadPoolExecutor]]:
        ctx = multiprocessing.get_context("fork")
        procs = cf.ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=init_worker)
        threads = cf.ThreadPoolExecutor(4, thread_name_prefix="fetch")
        try:
            yield procs, threads
        finally:
            stopping = self.stop.is_set()
            threads.shutdown(wait=not stopping, cancel_futures=True)
            if stopping:
                for p in list(getattr(procs, "_processes", {}).values()):
                    p.kill()  # abandoned steps leave only .partial dirs, cleared next run
            procs.shutdown(wait=True, cancel_futures=True)

    def _loop(self) -> None:
        while not self.stop.is_set():
            self._take_new_manifest()
            self._submit_ready()
            if not self.inflight and not self.pending_commit and not self.delayed:
                return
            timeout = self._next_wakeup()
            done, _ = cf.wait(list(self.inflight), timeout=timeout, return_when=cf.FIRST_COMPLETED)
            for future in done:
                self._complete(future)
            self._commit()
            self._report()

    def _next_wakeup(self) -> float:
        now = time.monotonic()
        wake = min([*self.delayed.values(), now + 1.0])
        if self.pending_commit:
            wake = min(wake, now + self.commit_every)
        return max(0.0, wake - now)

    # ---- submit and complete -----------------------------------------------------------------

    def _submit_ready(self) -> None:
        busy = {a.key for a in self.inflight.values()}
        busy |= {(c, u) for c, units in self.pending_commit.items() for u, _ in units}
        now = time.monotonic()
        # A bounded queue: a unit's VerifyUnit then runs right behind its ExtractUnit, while its
        # bytes are in the page cache, and queued work items (VerifyUnit carries the unit's
        # whole file list) do not pile up in this process for the length of the archive.
        pooled = sum(isinstance(a, _POOLED) for a in self.inflight.values())
        for action in plan(self.manifest, Observed(self.observed)):
            key = action.key
            blocked = key in self.failed or (action.component, "") in self.failed
            if key in busy or blocked or self.delayed.get(key, 0) > now:
                continue
            self.delayed.pop(key, None)
            if isinstance(action, Blocked):
                self._fail(action, action.reason)
                continue
            if isinstance(action, _POOLED):
                if pooled >= 2 * self.workers:
                    continue
                pooled += 1
            busy.add(key)
            try:
                future = self.steps.submit(action)
            except Exception as exc:  # noqa: BLE001 - a step that cannot start (a size pin) fails like any step
                future = cf.Future()
                future.set_exception(exc)
            self.inflight[future] = action

    def _complete(self, future: cf.Future[Any]) -> None:
        action = self.inflight.pop(future)
        if action.component not in self.manifest.components:
            return  # removed from the manifest while it ran: its result stays on disk, unrecorded
        try:
            verified = self.steps.complete(action, future.result())
        except Exception as exc:  # noqa: BLE001 - classify decides; nothing escapes unlogged
            self._failed_step(action, exc)
        else:
            if verified:
                self.pending_commit.setdefault(action.component, []).append(
                    (getattr(action, "unit", ""), time.monotonic()))
        self._refresh(action)
        if isinstance(action, IndexArchive) and action.key not in self.failed:
            self._recheck_space(action)

    def _recheck_space(self, action: Action) -> None:
        """The index now knows the exact bytes and inodes: refuse before the first write."""
        try:
            check_space(self.manifest, Observed(self.observed))
        except NoSpace as e:
            self._fail(action, str(e))

    def _failed_step(self, action: Action, exc: BaseException) -> None:
        err = classify(exc, action)
        key = action.key
        self.attempts[key] = self.attempts.get(key, 0) + 1
        if isinstance(err, TemporaryError) and self.attempts[key] < MAX_ATTEMPTS:
            self.delayed[key] = time.monotonic() + err.delay
            self.log.warning("step.retrying", component=action.component, step=action.kind,
                             delay=err.delay, error=str(err))
            self.journal.step(action.component, key[1], action.kind, "retry", str(err))
            return
        message = str(err)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            message += self._space_still_needed()
        self._fail(action, message)

    def _space_still_needed(self) -> str:
        """What the rest of the plan needs where the disk filled up, so the user knows how much to free."""
        try:
            report = space_report(space_needs(self.manifest, Observed(self.observed)))
        except OSError:
            return ""
        short = [fs for fs in report if not fs.fits]
        return "".join(f"; {fs.filesystem} needs {fs.need_bytes:,} bytes and {fs.need_inodes:,} inodes "
                       f"to finish, {fs.free_bytes:,} bytes and {fs.free_inodes:,} inodes are free"
                       for fs in short)

    def _fail(self, action: Action, message: str) -> None:
        self.failed[action.key] = message
        self.journal.step(action.component, action.key[1], action.kind, "failed", message)
        self.log.error("step.failed", component=action.component, unit=action.key[1] or None,
                       step=action.kind, error=message)
        self.board.update(action.component, phase="error", last_error=message)

    def _refresh(self, action: Action) -> None:
        comp = self.manifest.components[action.component]
        state = self.observed.get(comp.name)
        if isinstance(action, UnitAction) and state is not None and state.archive_sha256:
            rows = self.journal.units(comp.name)
            units = tuple(
                observe_unit(comp, self.journal, u.index, state.archive_sha256, rows.get(u.name))
                if u.name == action.unit else u for u in state.units)
            self.observed[comp.name] = replace(state, units=units)
        else:
            self.observed[comp.name] = observe_component(comp, self.journal)

    # ---- group commit ------------------------------------------------------------------------

    def _commit(self, force: bool = False) -> None:
        if not self.pending_commit:
            return
        oldest = min(t for units in self.pending_commit.values() for _, t in units)
        count = sum(len(units) for units in self.pending_commit.values())
        idle = not self.inflight
        if not (force or idle or count >= 256 or time.monotonic() - oldest >= self.commit_every):
            return
        # One flush for every unit in the batch: after syncfs returns, the extracted files
        # and their directory renames survive power loss, so VERIFIED may be recorded and
        # the tars deleted (journal commit is synchronous=FULL).
        for path in self._commit_filesystems():
            platform.syncfs(path)
        pending, self.pending_commit = self.pending_commit, {}
        for name, units in pending.items():
            unit_names = [u for u, _ in units]
            self.journal.mark_verified(name, unit_names)
            for unit in unit_names:
                self.journal.step(name, unit, "Commit", "ok")
                self.log.info(self.steps.event(name, "verified"), component=name, unit=unit)
                self._refresh(UnitAction(name, unit))

    def _commit_filesystems(self) -> list[Path]:
        seen: dict[int, Path] = {}
        for name in self.pending_commit:
            into = self.manifest.components[name].into
            for path in (into, self.manifest.state_dir):
                if path is not None and path.exists():
                    seen.setdefault(path.stat().st_dev, path)
        return list(seen.values())

    # ---- reporting -----------------------------------------------------------------------------

    def _report(self) -> None:
        running: dict[str, set[str]] = {}
        for action in self.inflight.values():
            running.setdefault(action.component, set()).add(action.kind)
        for name, comp in self.manifest.components.items():
            error = next((m for (c, _), m in self.failed.items() if c == name), None)
            fields = summarize(comp, self.observed.get(name), running.get(name, set()), error)
            if fields.get("phase") == "fetching":
                fields = {k: v for k, v in fields.items() if not k.startswith(("bytes", "files"))}
            self.board.update(name, **fields)
        now = time.monotonic()
        if now - self._last_progress >= 10.0:
            self._last_progress = now
            snap = self.board.snapshot()["components"]
            self.log.info("apply.progress", **{n: f"{c['phase']} {c['files_done']}/{c['files_total']} files"
                                               for n, c in snap.items()})

    def _drain_on_stop(self) -> None:
        if not self.stop.is_set():
            return
        deadline = time.monotonic() + self.manifest.daemon.stop_timeout
        while self.inflight and time.monotonic() < deadline:
            done, _ = cf.wait(list(self.inflight), timeout=max(0.0, deadline - time.monotonic()),
                              return_when=cf.FIRST_COMPLETED)
            for future in done:
                self._complete(future)
        self.log.info("apply.stopped", abandoned=len(self.inflight))

    def _outcome(self) -> Outcome:
        self._report()
        out = Outcome(stopped=self.stop.is_set())
        for (name, _), message in self.failed.items():
            out.failed.setdefault(name, message)
        for comp in self.manifest.enabled():
            if is_ready(comp, self.observed.get(comp.name)):
                out.ready.append(comp.name)
            elif comp.name not in out.failed and not out.stopped:
                waiting = [d for d in comp.after if not is_ready(self.manifest.components[d], self.observed.get(d))]
                out.failed[comp.name] = (f"not started: waits for {', '.join(waiting)} (components.{comp.name}.after)"
                                         if waiting else "did not converge; run again or see the log")
        self.board.state = "stopped" if out.stopped else ("converged" if out.ok else "failed")
        self.board.write(force=True)
        event = "apply.converged" if out.ok else ("apply.stopped" if out.stopped else "apply.failed")
        self.log.info(event, ready=out.ready, failed=out.failed or None)
        return out


def check_space(manifest: Manifest, observed: Observed) -> None:
    """Refuse to start work that cannot fit (the TFDS pitfall: failing after a day)."""
    log = logs.get()
    for fs in space_report(space_needs(manifest, observed)):
        log.info("space.checked", filesystem=fs.filesystem, need_bytes=fs.need_bytes,
                 free_bytes=fs.free_bytes, need_inodes=fs.need_inodes, free_inodes=fs.free_inodes)
        if fs.need_bytes > fs.free_bytes:
            raise NoSpace(fs.filesystem, fs.need_bytes - fs.free_bytes, fs.free_bytes)
        if fs.need_inodes > fs.free_inodes:
            raise NoSpace(fs.filesystem, fs.need_inodes - fs.free_inodes, fs.free_inodes, "inodes")
