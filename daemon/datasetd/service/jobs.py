"""The daemon's two kinds of work, each in a thread of its own: a reconcile pass and a deep verification.

The main loop runs one job at a time, so a deep verification never reads a
tree that a pass is writing and the two never compete for the disk. A job
"beats" while it makes its rounds; the main loop withholds systemd's watchdog
ping from a job that has been silent too long (see daemon.STALL_LIMIT).

Deep verification is throttled, simply and on purpose:
* one worker process, so it reads one file at a time;
* that worker runs at nice 10 and at the lowest best-effort I/O priority
  (`ionice -c2 -n7`): training jobs reading the same disk come first, yet the
  verification is never starved outright the way the idle class can be;
* on average at most VERIFY_MAX_RATE bytes/s: after each unit it waits until
  its bytes fit the rate, so a fast disk whose scheduler ignores I/O priority
  (`none`, common on NVMe) is not saturated either.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from datasetd import logs, platform
from datasetd.config.manifest import Manifest
from datasetd.engine.deepverify import Pace, recorded_units, verify_units
from datasetd.engine.executor import Executor
from datasetd.engine.pools import init_worker
from datasetd.engine.stepstate import Outcome
from datasetd.sources.base import Source
from datasetd.state.access import share_state
from datasetd.state.durable import write_text_fast
from datasetd.state.journal import JournalDB, rebuilding
from datasetd.state.status import StatusBoard

VERIFY_MAX_RATE = 256 * 1024 * 1024  # bytes/s, averaged per unit
VERIFY_NICE = 10


class Job:
    """One job in a daemon thread; `done` is called from that thread when it ends, however it ends."""

    def __init__(self, kind: str, manifest: Manifest, target: Callable[[Job], object],
                 done: Callable[[], None]) -> None:
        self.kind = kind
        self.manifest = manifest
        self.stop = threading.Event()
        self.beat = time.monotonic()
        self.result: object = None
        self.error: BaseException | None = None
        self.executor: Executor | None = None
        self._target = target
        self._done = done
        # A daemon thread: a job wedged past stop_timeout must not keep the process from exiting.
        self._thread = threading.Thread(target=self._main, name=f"datasetd-{kind}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def touch(self) -> None:
        self.beat = time.monotonic()

    def _main(self) -> None:
        try:
            self.result = self._target(self)
        except BaseException as exc:  # noqa: BLE001 - handed to the main loop, which logs it
            self.error = exc
        finally:
            self._done()


# ---- reconcile -------------------------------------------------------------------------------


def reconcile(job: Job, board: StatusBoard, sources: Mapping[str, Source],
              planned: Callable[[], None]) -> Outcome:
    """One pass over job.manifest; the journal is opened in this thread, which alone uses it."""
    def opened() -> JournalDB:
        journal = JournalDB(job.manifest.state_dir)
        share_state(job.manifest.state_dir, job.manifest.root)
        return journal

    first = [planned]  # once per pass, even when damage met mid-run makes it run over a fresh journal

    def run(journal: JournalDB) -> Outcome:
        def beat() -> None:  # once per round of the executor's loop: a sign of life, and "planned" once
            job.touch()
            while first:
                first.pop()()

        job.executor = Executor(job.manifest, journal, board, sources=sources, stop=job.stop, on_round=beat)
        return job.executor.run()

    return rebuilding(opened, run)


# ---- deep verification -----------------------------------------------------------------------


def deep_verify(job: Job) -> int:
    """Re-hash every recorded unit in the background; forget the record of each that differs.

    Returns how many differ. A forgotten unit is of unknown provenance to the
    planner, which compares it with its tar or re-extracts it in the next pass
    (the main loop starts one).
    """
    log = logs.get()
    journal = JournalDB(job.manifest.state_dir, full_check=True)  # the pass reads everything anyway
    try:
        units, _unrecorded = recorded_units(job.manifest, journal)  # unrecorded ones are the next pass's
        log.info("verify.started", units=len(units), bytes=sum(u.bytes for u in units))
        pace = Pace(workers=1, initializer=lower_priority, max_rate=VERIFY_MAX_RATE)
        tally = verify_units(journal, units, pace, job.stop, job.touch)
        if not job.stop.is_set():
            # Stamped before the event, so whoever sees "finished" also sees when (a test raced this).
            # Not flushed: a power loss can only make the next verification come sooner.
            write_text_fast(_last_verify_path(job.manifest), f"{time.time():.0f}\n")
        log.info("verify.finished", units=tally.checked, mismatched=tally.mismatched, stopped=job.stop.is_set())
        return tally.mismatched
    finally:
        journal.close()


def _last_verify_path(manifest: Manifest) -> Path:
    return manifest.state_dir / "deep_verify.last"


def last_deep_verify(manifest: Manifest) -> float | None:
    """When the last complete deep verification ended (Unix time), so restarts do not postpone the next forever."""
    try:
        return float(_last_verify_path(manifest).read_text().strip())
    except (OSError, ValueError):
        return None


def lower_priority() -> None:
    """Make this process a background reader: nice 10, best-effort I/O class at its lowest level.

    Best effort: a kernel or seccomp filter that refuses leaves normal priority.
    Also dies with its parent and leaves SIGINT to the daemon, like the executor's workers.
    """
    init_worker()
    platform.nice_at_least(VERIFY_NICE)
    platform.lowest_io_priority()


__all__ = ["VERIFY_MAX_RATE", "Job", "deep_verify", "last_deep_verify", "lower_priority", "reconcile"]
