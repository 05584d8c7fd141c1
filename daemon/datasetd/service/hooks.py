"""Completion hooks: `[daemon] on_ready` / `on_error`, run when a component turns ready or fails.

Called after each pass, by `apply` (before it exits) and by the daemon (on a thread of
its own, so a slow hook never holds the main loop or its watchdog pings). A hook is an
argv run without a shell, with DATASETD_COMPONENT, DATASETD_PHASE and DATASETD_ROOT in
its environment, stdin closed, in its own session; after `hook_timeout` its whole
process group is killed. Its outcome is logged (hook.finished / hook.failed) and never
changes the component's: the data is there whether or not the notification worked.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import threading
from collections.abc import Mapping, Sequence

from datasetd import logs
from datasetd.config.manifest import Manifest
from datasetd.engine.stepstate import Outcome
from datasetd.state import status as status_mod

OUTPUT_SHOWN = 400  # characters of a failed hook's stderr kept in its log line


class Hooks:
    """Remembers what it announced, so a component's hook runs when its phase changes, not every pass."""

    def __init__(self, manifest: Manifest, announced: Mapping[str, str] | None = None) -> None:
        self.manifest = manifest
        self.announced: dict[str, str] = dict(announced or {})
        self._threads: list[threading.Thread] = []

    def due(self, outcome: Outcome) -> list[tuple[str, str]]:
        """(component, phase) pairs whose phase changed since the last announcement, and whose hook is set."""
        d = self.manifest.daemon
        now = {**dict.fromkeys(outcome.ready, "ready"), **dict.fromkeys(outcome.failed, "error")}
        out = []
        for name, phase in sorted(now.items()):
            if self.announced.get(name) != phase and (d.on_ready if phase == "ready" else d.on_error):
                out.append((name, phase))
            self.announced[name] = phase
        return out

    def run(self, outcome: Outcome) -> None:
        for name, phase in self.due(outcome):
            self._run_one(name, phase)

    def run_in_background(self, outcome: Outcome) -> None:
        due = self.due(outcome)

        def run_all() -> None:
            for name, phase in due:
                self._run_one(name, phase)

        if due:
            t = threading.Thread(target=run_all, name="hooks", daemon=True)
            t.start()
            self._threads.append(t)

    def join(self, timeout: float) -> None:
        for t in self._threads:
            t.join(timeout)

    def _run_one(self, component: str, phase: str) -> None:
        d = self.manifest.daemon
        argv = d.on_ready if phase == "ready" else d.on_error
        run_hook(argv, {"DATASETD_COMPONENT": component, "DATASETD_PHASE": phase,
                        "DATASETD_ROOT": str(self.manifest.root)}, d.hook_timeout)


def last_phases(manifest: Manifest) -> dict[str, str]:
    """What the last run's status.json said, so a restart does not announce again what it did."""
    data = status_mod.read(manifest.state_dir / "status.json") or {}
    comps = data.get("components")
    if not isinstance(comps, dict):
        return {}
    return {n: c["phase"] for n, c in comps.items() if isinstance(c, dict) and c.get("phase") in ("ready", "error")}


def run_hook(argv: Sequence[str], env: Mapping[str, str], timeout: float) -> bool:
    """Run one hook to completion or timeout; True when it exited 0. Never raises."""
    log = logs.get()
    fields = {"hook": argv[0], "component": env.get("DATASETD_COMPONENT"), "phase": env.get("DATASETD_PHASE")}
    with tempfile.TemporaryFile() as err:  # not a pipe: a grandchild keeping it open cannot hang us
        try:
            proc = subprocess.Popen(list(argv), env={**os.environ, **env}, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
        except OSError as e:
            log.warning("hook.failed", **fields, error=f"cannot start: {e.strerror}")
            return False
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            log.warning("hook.failed", **fields, error=f"still running after {timeout:g} s; killed")
            return False
        if code != 0:
            err.seek(0)
            tail = err.read().decode(errors="replace").strip()[-OUTPUT_SHOWN:]
            log.warning("hook.failed", **fields, exit_code=code, stderr=tail or None)
            return False
    log.info("hook.finished", **fields)
    return True


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # its own session: the hook and whatever it started
    except ProcessLookupError:
        pass
    proc.wait()
