"""`datasetd wait` and `datasetd.wait()`: block until components are ready, one fails, or time runs out.

Sits beside the verbs (commands): it only reads, through commands.current_status,
which is the daemon's status.json while one runs and otherwise the disk and the
journal (with the last error an apply left). For a Slurm prolog or a torchrun
launcher that must not start training on half a data set.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

from datasetd.commands import current_status
from datasetd.config.manifest import Manifest
from datasetd.config.parsing import load
from datasetd.errors import PermanentError, UsageError

POLL_SECONDS = 0.5


class ComponentFailed(PermanentError):
    def __init__(self, component: str, error: str) -> None:
        self.component = component
        self.error = error
        super().__init__(f"{component}: {error}")


def wait_ready(manifest: Manifest, components: Iterable[str] | None = None,
               timeout: float | None = None) -> dict[str, str]:
    """Phases once every named component (default: every enabled one) is ready.

    Raises ComponentFailed when one is in error, TimeoutError when `timeout` seconds pass first.
    """
    names = list(components) if components else [c.name for c in manifest.enabled()]
    unknown = [n for n in names if n not in manifest.components]
    if unknown:
        raise UsageError(f"{manifest.path}: no component named {unknown[0]!r}; "
                         f"known: {', '.join(manifest.components)}")
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        snap = current_status(manifest)
        comps = {n: snap["components"][n] for n in names}
        for name, c in comps.items():
            # a live writer says `error` itself; a finished apply leaves its last error behind
            if c["phase"] == "error" or (snap.get("pid") is None and c.get("last_error") and c["phase"] != "ready"):
                raise ComponentFailed(name, c.get("last_error") or "in error")
        if all(c["phase"] == "ready" for c in comps.values()):
            return {n: c["phase"] for n, c in comps.items()}
        if deadline is not None and time.monotonic() >= deadline:
            waiting = ", ".join(f"{n} ({c['phase']})" for n, c in comps.items() if c["phase"] != "ready")
            raise TimeoutError(f"{manifest.path}: not ready after {timeout:g} s: {waiting}")
        time.sleep(POLL_SECONDS)


def wait(manifest_path: str | Path, components: Iterable[str] | None = None,
         timeout: float | None = None) -> dict[str, str]:
    """Block until the components of the manifest at `manifest_path` are ready.

    `components`: names (default: every enabled one); `timeout`: seconds (default: forever).
    Returns {name: "ready"}; raises datasetd.waiting.ComponentFailed if one is in error,
    TimeoutError if the timeout passes, datasetd.errors.ManifestError if the manifest is invalid.
    """
    return wait_ready(load(manifest_path), components, timeout)
