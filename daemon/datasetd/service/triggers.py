"""What wakes the daemon's main loop: signals, manifest edits, and the timers.

Each source only posts a short message through `post` (a queue.SimpleQueue's
put, which is safe to call from a signal handler); the main loop decides.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from datasetd import logs
from datasetd.config.manifest import DaemonSettings

Post = Callable[[str], None]

STOP, RELOAD, EDIT, RECONCILE, VERIFY = "stop", "reload", "edit", "reconcile", "verify"
_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_handlers_active = False
_fork_hook_registered = False

# ---- signals ---------------------------------------------------------------------------------


@contextlib.contextmanager
def signal_handlers(post: Post) -> Iterator[None]:
    """SIGTERM/SIGINT post "stop:NAME", SIGHUP posts "reload". Only the main thread may install them."""
    global _handlers_active
    if threading.current_thread() is not threading.main_thread():
        yield  # run() called from a thread (an embedding program): it stops through the stop event
        return

    def handler(signum: int, _frame: FrameType | None) -> None:
        post(RELOAD if signum == signal.SIGHUP else f"{STOP}:{signal.Signals(signum).name}")

    _register_fork_hook()
    previous = {sig: signal.signal(sig, handler) for sig in _SIGNALS}
    _handlers_active = True
    try:
        yield
    finally:
        _handlers_active = False
        for sig, old in previous.items():
            signal.signal(sig, old)


def _register_fork_hook() -> None:
    global _fork_hook_registered
    if not _fork_hook_registered:
        _fork_hook_registered = True
        os.register_at_fork(after_in_child=_default_signals_in_child)


def _default_signals_in_child() -> None:
    # A forked worker inherits our Python handlers, which would post "stop" into the
    # child's copy of the queue, where nobody reads it: SIGTERM would not end the worker.
    if _handlers_active:
        for sig in _SIGNALS:
            signal.signal(sig, signal.SIG_DFL)


# ---- manifest edits --------------------------------------------------------------------------

# Reads (our own load() opens the file) must not count as edits, or each reload would trigger the next.
_EDIT_EVENTS = {"created", "modified", "moved", "deleted", "closed"}


class _EditHandler(FileSystemEventHandler):
    def __init__(self, names: set[str], post: Post) -> None:
        self.names = names
        self.post = post

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory or event.event_type not in _EDIT_EVENTS:
            return
        paths = {os.fsdecode(event.src_path), os.fsdecode(event.dest_path)}
        if paths & self.names:
            self.post(EDIT)


class ManifestWatcher:
    """Posts "edit" when a manifest file changes, by watching its directory.

    Editors save by writing a temp file and renaming it over the old one: a watch
    on the file itself would follow the old, unlinked inode after the first save.
    Bursts are debounced by the main loop.
    """

    def __init__(self, paths: Iterable[Path], post: Post) -> None:
        files = {Path(os.path.abspath(p)) for p in paths}
        self.dirs = sorted({str(f.parent) for f in files})
        self.handler = _EditHandler({str(f) for f in files}, post)
        self.observer: Any = None

    def start(self) -> None:
        try:
            self.observer = self._started(Observer())
        except OSError as exc:  # out of inotify instances or watches: poll instead
            logs.get().warning("watch.fell_back", reason=exc.strerror or str(exc))
            self.observer = self._started(PollingObserver(timeout=2.0))

    def _started(self, observer: Any) -> Any:
        for directory in self.dirs:
            observer.schedule(self.handler, directory, recursive=False)
        observer.daemon = True
        observer.start()
        return observer

    def stop(self) -> None:
        if self.observer is not None:
            self.observer.stop()
            self.observer.join(timeout=5.0)


# ---- timers ----------------------------------------------------------------------------------


class Schedule:
    """apscheduler posts "reconcile" every reconcile_every and "verify" every deep_verify_every.

    The jobs only post a message: the main loop runs the work, one job at a time,
    so a slow verification cannot overlap itself or a pass whatever the timers do.
    max_instances=1 and coalesce=True keep missed runs (a suspended laptop) to one.
    """

    def __init__(self, post: Post) -> None:
        self.post = post
        self.scheduler = BackgroundScheduler(timezone=UTC)
        self.every: dict[str, float] = {}
        self.last_verify: float | None = None

    def start(self, settings: DaemonSettings, last_verify: float | None = None) -> None:
        self.last_verify = last_verify
        self.update(settings)
        self.scheduler.start()

    def update(self, settings: DaemonSettings) -> None:
        """Reschedule only what changed, so an unrelated edit does not postpone a timer."""
        for name, seconds in ((RECONCILE, settings.reconcile_every), (VERIFY, settings.deep_verify_every)):
            if self.every.get(name) == seconds:
                continue
            self.every[name] = seconds
            trigger = IntervalTrigger(seconds=seconds, start_date=self._first_run(name, seconds), timezone=UTC)
            self.scheduler.add_job(self.post, trigger, args=[name], id=name, name=name, replace_existing=True,
                                   max_instances=1, coalesce=True, misfire_grace_time=None)

    def _first_run(self, name: str, seconds: float) -> datetime:
        now = time.time()
        due = now + seconds
        if name == VERIFY and self.last_verify is not None:
            # Counted from the last complete verification: a daemon restarted more often than
            # deep_verify_every (a nightly reboot) still verifies; an overdue one verifies soon.
            due = max(self.last_verify + seconds, now + 1.0)
        return datetime.fromtimestamp(due, UTC)

    def stop(self) -> None:
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
