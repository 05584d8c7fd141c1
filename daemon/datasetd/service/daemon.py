"""`datasetd run`: keep the manifest's tree converged until stopped.

One main loop, in the main thread, makes every decision. Everything else only
posts a message to it (`_daemon_triggers`):

    SIGTERM / SIGINT             "stop:SIG..."   stop within daemon.stop_timeout, exit 0
    SIGHUP                       "reload"        reread the manifest (RELOADING=1 ... READY=1)
    the manifest watcher         "edit"          reread it once edits settle (DEBOUNCE)
    apscheduler's timers         "reconcile" / "verify"
    the running job              "planned" (its first plan: READY=1), "done"

At most one job runs at a time, in its own thread (`_daemon_jobs`): a reconcile
pass or a deep verification. The loop stays free to ping systemd's watchdog,
which it does only while the job shows signs of life (STALL_LIMIT), to answer
signals, and to hand an edited manifest to the running pass at once.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from datasetd import logs
from datasetd.config.manifest import Manifest
from datasetd.config.parsing import load
from datasetd.engine.stepstate import Outcome
from datasetd.errors import DatasetdError, ManifestError
from datasetd.service import systemd
from datasetd.service.hooks import Hooks, last_phases
from datasetd.service.jobs import Job, deep_verify, last_deep_verify, reconcile
from datasetd.service.triggers import EDIT, RECONCILE, RELOAD, STOP, VERIFY, ManifestWatcher, Schedule, signal_handlers
from datasetd.service.wiring import serve_metrics, serve_web, status_line
from datasetd.sources.base import Source
from datasetd.sources.registry import add_sources, close_sources
from datasetd.state.lock import RootLock
from datasetd.state.status import StatusBoard

DEBOUNCE = 0.5  # an editor's save is a burst of events: reread once they settle
# A job silent this long is wedged: pings stop and systemd restarts us. Generous, because the
# first observe of a cold ImageNet tree stats 1.28M files and a syncfs may flush gigabytes.
STALL_LIMIT = 600.0
STOP_GRACE = 5.0  # beyond stop_timeout, for the executor to kill its workers and write status
START_EXTEND = 60.0  # EXTEND_TIMEOUT_USEC while the first observe runs (TimeoutStartSec=120s)
STATUS_EVERY = 1.0


def run(path: Path, manifest: Manifest, stop: threading.Event) -> int:
    """Run until `stop` is set or SIGTERM/SIGINT arrives; 0 on a clean stop. Raises UsageError if root is locked."""
    return Daemon(path, manifest, stop).run()


class Daemon:
    def __init__(self, path: Path, manifest: Manifest, stop: threading.Event) -> None:
        self.path = path
        self.manifest = manifest
        self.stop = stop
        self.log = logs.get()
        self.inbox: queue.SimpleQueue[str] = queue.SimpleQueue()
        self.hooks = Hooks(manifest, last_phases(manifest))  # read before the board rewrites status.json
        self.board = StatusBoard(manifest)
        self.sources: dict[str, Source] = {}
        self.job: Job | None = None
        self.want_pass, self.want_verify = True, False
        self.edit_due: float | None = None
        self.ready = False
        self.ping_every = systemd.watchdog_interval()
        self.next_ping = self.next_status = self.next_extend = 0.0
        self.last_status = ""
        self.stall_logged = False
        self.schedule = Schedule(self.inbox.put)

    # ---- lifetime --------------------------------------------------------------------------------

    def run(self) -> int:
        with RootLock(self.manifest.root):
            self.log.info("daemon.started", manifest=str(self.manifest.path), sha256=self.manifest.sha256,
                          pid=os.getpid(), watchdog_ping_seconds=self.ping_every)
            add_sources(self.sources, self.manifest)
            with signal_handlers(self.inbox.put), contextlib.ExitStack() as services:
                services.callback(close_sources, self.sources)  # last: after the job has stopped using them
                self._start_services(services)
                try:
                    self._loop()
                finally:
                    systemd.stopping()
                    self._stop_job()
            self.board.state = "stopped"
            self.board.write(force=True)
            self.hooks.join(timeout=self.manifest.daemon.hook_timeout)
            self.log.info("daemon.stopped")
        return 0

    def _start_services(self, services: contextlib.ExitStack) -> None:
        if self.manifest.daemon.metrics is not None:
            server = serve_metrics(self.path, self.manifest.daemon.metrics, self.board)
            services.callback(server.close)
        if self.manifest.daemon.web is not None:
            web = serve_web(self.path, self.manifest.daemon.web, self.board, self.manifest.daemon.metrics is not None)
            services.callback(web.close)
        watcher = ManifestWatcher({self.path, self.manifest.path}, self.inbox.put)
        watcher.start()
        services.callback(watcher.stop)
        self.schedule.start(self.manifest.daemon, last_verify=last_deep_verify(self.manifest))
        services.callback(self.schedule.stop)

    # ---- the loop --------------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self.stop.is_set():
            self._wait_and_handle()
            if self.stop.is_set():
                return
            if self.edit_due is not None and time.monotonic() >= self.edit_due:
                self.edit_due = None
                self._reload(trigger="edit")
            self._start_next_job()
            self._tick()

    def _wait_and_handle(self) -> None:
        deadlines = [time.monotonic() + 1.0, self.next_status]
        if self.edit_due is not None:
            deadlines.append(self.edit_due)
        if self.ping_every is not None:
            deadlines.append(self.next_ping)
        wake = min(deadlines)
        now = time.monotonic()
        try:
            message = self.inbox.get(timeout=max(0.0, wake - now))
        except queue.Empty:
            return
        while True:
            self._handle(message)
            try:
                message = self.inbox.get_nowait()
            except queue.Empty:
                return

    def _handle(self, message: str) -> None:
        if message.startswith(STOP):
            self.log.info("daemon.stopping", signal=message.partition(":")[2],
                          stop_timeout=self.manifest.daemon.stop_timeout)
            self.stop.set()
        elif message == RELOAD:
            self._reload(trigger="sighup")
        elif message == EDIT:
            self.edit_due = time.monotonic() + DEBOUNCE
        elif message == RECONCILE:
            self.want_pass = True
        elif message == VERIFY:
            self.want_verify = True
        elif message == "planned":
            self._send_ready()
        elif message == "done":
            self._finish_job()

    def _tick(self) -> None:
        now = time.monotonic()
        if self.ping_every is not None and now >= self.next_ping:
            self.next_ping = now + self.ping_every
            if self._healthy(now):
                systemd.watchdog_ping()
        if not self.ready and now >= self.next_extend and self._healthy(now):
            self.next_extend = now + START_EXTEND / 3
            systemd.notify(f"EXTEND_TIMEOUT_USEC={int(START_EXTEND * 1e6)}")
        if now >= self.next_status:
            self.next_status = now + STATUS_EVERY
            line = status_line(self.board.snapshot())
            if line != self.last_status:
                self.last_status = line
                systemd.status(line)

    def _healthy(self, now: float) -> bool:
        job = self.job
        silent = now - job.beat if job is not None else 0.0
        if silent < STALL_LIMIT:
            self.stall_logged = False
            return True
        if not self.stall_logged and job is not None:
            self.stall_logged = True
            self.log.error("daemon.stalled", job=job.kind, silent_seconds=round(silent))
        return False

    def _send_ready(self) -> None:
        if not self.ready:
            self.ready = True
            systemd.ready()

    # ---- jobs ------------------------------------------------------------------------------------

    def _start_next_job(self) -> None:
        if self.job is not None:
            return
        if self.want_pass:
            self.want_pass = False
            self.job = self._pass_job()
        elif self.want_verify:
            self.want_verify = False
            self.job = Job("verify", self.manifest, deep_verify, lambda: self.inbox.put("done"))
        else:
            return
        self.job.start()

    def _pass_job(self) -> Job:
        self.board.reset(self.manifest)  # an edit that no running pass took has not reached the board yet
        self.board.new_run()  # state running; phases may start again from pending
        self.board.extra.pop("pass_error", None)
        self.board.write(force=True)  # readers must not take the last pass's "converged" for this one's
        board, sources, post = self.board, self.sources, self.inbox.put

        def target(job: Job) -> object:
            return reconcile(job, board, sources, lambda: post("planned"))

        return Job("reconcile", self.manifest, target, lambda: post("done"))

    def _finish_job(self) -> None:
        job, self.job = self.job, None
        if job is None:
            return
        job.join(timeout=5.0)  # it posted "done" on its way out
        self.next_status = 0.0  # tell systemd how it ended now, not a second later
        if job.kind == "reconcile":
            self._after_pass(job)
        elif job.error is not None:
            self.log.error("verify.aborted", error=str(job.error), exc_info=not isinstance(job.error, DatasetdError))
        else:
            self.schedule.last_verify = last_deep_verify(job.manifest)  # an edited interval counts from here
            self.want_pass = self.want_pass or bool(job.result)  # repair what it found
        # A first pass that failed before planning (no space, say) still leaves a running daemon:
        # it retries on the timer and on every edit, so systemd should see it started.
        self._send_ready()

    def _after_pass(self, job: Job) -> None:
        if job.error is not None:
            message = str(job.error) if isinstance(job.error, DatasetdError) else repr(job.error)
            self.log.error("apply.aborted", error=message, exc_info=not isinstance(job.error, DatasetdError))
            self.board.state = "failed"
            self.board.extra["pass_error"] = message
            self.board.write(force=True)
        ran = job.executor.manifest if job.executor is not None else job.manifest
        if isinstance(job.result, Outcome):
            self.hooks.manifest = ran
            self.hooks.run_in_background(job.result)
        if ran is not self.manifest:
            # The edit came after the pass last looked for one: the next pass applies it.
            self.want_pass = True
            self.log.info("daemon.reloaded", manifest=str(self.manifest.path), sha256=self.manifest.sha256)

    def _stop_job(self) -> None:
        job = self.job
        if job is None:
            return
        job.stop.set()
        deadline = time.monotonic() + self.manifest.daemon.stop_timeout + STOP_GRACE
        while job.alive() and time.monotonic() < deadline:
            job.join(timeout=0.2)
            self._tick()  # a stop that takes stop_timeout must not look wedged to the watchdog
        if job.alive():
            self.log.warning("daemon.stop_overran", job=job.kind, waited_seconds=round(
                self.manifest.daemon.stop_timeout + STOP_GRACE))

    # ---- reloads ---------------------------------------------------------------------------------

    def _reload(self, trigger: str) -> None:
        try:
            new = self._load_edit()
        except ManifestError as exc:
            with self._reload_notice():
                self._reject(exc)
            return
        if trigger == "edit" and new.sha256 == self.manifest.sha256:
            self._clear_manifest_error()  # the same bytes again: an invalid edit was undone, or a touch
            return
        with self._reload_notice():
            self._accept(new, trigger)

    @contextlib.contextmanager
    def _reload_notice(self) -> Iterator[None]:
        # Before the first READY=1 systemd is still starting us: a reload is no separate state then.
        if self.ready:
            systemd.reloading()
        try:
            yield
        finally:
            if self.ready:
                systemd.ready()

    def _load_edit(self) -> Manifest:
        new = load(self.path)
        if new.root != self.manifest.root:
            raise ManifestError(str(self.path), "root",
                                f"root cannot change while running (running on {self.manifest.root}, "
                                f"the edit says {new.root})", "restart the service to use the new root")
        return new

    def _accept(self, new: Manifest, trigger: str) -> None:
        try:
            add_sources(self.sources, new)
        except Exception as exc:  # noqa: BLE001 - a transport that cannot start must not stop the running ones
            self._reject(exc)
            return
        self.manifest = new
        self.board.extra.pop("manifest_error", None)
        self.schedule.update(new.daemon)
        job = self.job
        if job is not None and job.kind == "reconcile":
            # The executor logs daemon.reloaded when it switches, within a second. One still being
            # built, or one ending before it switches, is caught by _after_pass.
            if job.executor is not None:
                job.executor.reload(new, self.sources)
        else:
            if job is not None:
                job.stop.set()  # a verification yields to the edit, and starts over after the pass
                self.want_verify = True
            self.board.reset(new)
            self.want_pass = True
            self.log.info("daemon.reloaded", manifest=str(new.path), sha256=new.sha256, trigger=trigger)
        self.board.write(force=True)

    def _reject(self, exc: BaseException) -> None:
        message = str(exc) if isinstance(exc, DatasetdError) else f"{self.path}: {exc!r}"
        self.log.error("daemon.reload_failed", manifest=str(self.path), error=message,
                       hint="the last good manifest keeps running")
        self.board.extra["manifest_error"] = message
        self.board.write(force=True)

    def _clear_manifest_error(self) -> None:
        if self.board.extra.pop("manifest_error", None) is not None:
            self.board.write(force=True)
