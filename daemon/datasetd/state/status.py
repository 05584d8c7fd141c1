"""status.json: what every component is doing, replaced atomically, schema documented in README.

Schema 1:
{
  "schema": 1, "version": str, "pid": int, "state": "running" | "converged" | "failed" | "stopped",
  "manifest": {"path": str, "sha256": str}, "root": str, "updated": ISO-8601 UTC,
  "components": {NAME: {
      "phase": "pending" | "fetching" | "unpacking" | "verifying" | "ready" | "error" | "disabled",
      "bytes_done": int, "bytes_total": int, "files_done": int, "files_total": int,
      "classes_done": int, "classes_total": int, "rate": float (bytes/s), "eta_seconds": float | null,
      "last_error": str | null, "retry": str | null (a pending retry, in words),
      "detail": {...transport detail: url, peers, health, hint; "step": "indexing" while the index
                 pass runs, bytes_done/bytes_total then being archive bytes read / archive size}}},
  written by `datasetd run` only (StatusBoard.extra), each present only when it applies:
  "manifest_error": str   an edited manifest was rejected (key path, TOML line/column); the last good one runs,
  "pass_error": str       the last reconcile pass raised before finishing (e.g. no space),
  "metrics": "HOST:PORT"  where the Prometheus endpoint listens,
  "web": "HOST:PORT"      where the status page listens
}
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from datasetd import __version__, logs
from datasetd.config.manifest import Manifest
from datasetd.state.durable import write_text_fast

SCHEMA = 1
PHASES = ("pending", "fetching", "unpacking", "verifying", "ready", "error", "disabled")
# Within one run a component's phase only moves forward along this order: extraction and
# verification interleave unit by unit, and a reader must not see "verifying -> unpacking".
_FORWARD = {"pending": 0, "fetching": 1, "unpacking": 2, "verifying": 3, "ready": 4}
STATUS_MODE = 0o640  # readable by the root's group (systemd/README.md: operators in that group)


@dataclass
class ComponentStatus:
    phase: str = "pending"
    bytes_done: int = 0
    bytes_total: int = 0
    files_done: int = 0
    files_total: int = 0
    classes_done: int = 0
    classes_total: int = 0
    rate: float = 0.0
    eta_seconds: float | None = None
    last_error: str | None = None
    retry: str | None = None  # "retrying in 60 s (attempt 2 of 3): <why>" while a retry is pending
    detail: dict[str, Any] = field(default_factory=dict)


class _Rate:
    """Bytes per second over a sliding window of samples."""

    def __init__(self, window: float = 10.0) -> None:
        self.window = window
        self.samples: list[tuple[float, int]] = []

    def update(self, done: int) -> float:
        now = time.monotonic()
        if self.samples and done < self.samples[-1][1]:
            self.samples.clear()  # a new phase started counting from zero
        self.samples.append((now, done))
        while len(self.samples) > 2 and now - self.samples[0][0] > self.window:
            self.samples.pop(0)
        (t0, d0), (t1, d1) = self.samples[0], self.samples[-1]
        return (d1 - d0) / (t1 - t0) if t1 > t0 else 0.0


class StatusBoard:
    """Thread-safe: fetch threads report progress while the coordinator reports steps.

    One lock covers the figures, the throttle, the snapshot and the file write, so the
    file on disk only ever moves forward: a snapshot taken earlier can never replace a
    later one (two threads used to race between snapshot and write).
    """

    def __init__(self, manifest: Manifest, path: Path | None = None, min_interval: float = 1.0) -> None:
        self.manifest = manifest
        self.path = path or manifest.state_dir / "status.json"
        self.min_interval = min_interval
        self.state = "running"
        self.components = {name: ComponentStatus(phase="pending" if c.enabled else "disabled")
                           for name, c in manifest.components.items()}
        self._rates = {name: _Rate() for name in manifest.components}
        self._lock = threading.RLock()
        self._written = 0.0
        self._write_failed = False
        self.extra: dict[str, Any] = {}

    def reset(self, manifest: Manifest) -> None:
        """Follow an edited manifest: new components appear, removed ones disappear."""
        with self._lock:
            self.manifest = manifest
            self.components = {name: self.components.get(name, ComponentStatus()) for name in manifest.components}
            for name, comp in manifest.components.items():
                if not comp.enabled:
                    self.components[name].phase = "disabled"
                self._rates.setdefault(name, _Rate())

    def new_run(self) -> None:
        """A new pass starts: phases may start again from pending (a file changed, a re-fetch)."""
        with self._lock:
            self.state = "running"
            for status in self.components.values():
                if status.phase in _FORWARD and status.phase != "ready":
                    status.phase = "pending"

    def update(self, name: str, **fields: Any) -> None:
        with self._lock:
            status = self.components.setdefault(name, ComponentStatus())
            phase = fields.pop("phase", status.phase)
            for key, value in fields.items():
                setattr(status, key, value)
            status.phase = _forward(status.phase, phase)
            if status.phase in ("ready", "disabled", "error"):
                status.retry = None
            if status.phase in ("ready", "disabled"):
                status.rate, status.eta_seconds = 0.0, None
            elif "bytes_done" in fields:
                status.rate = self._rates.setdefault(name, _Rate()).update(status.bytes_done)
                left = status.bytes_total - status.bytes_done
                status.eta_seconds = round(left / status.rate, 1) if status.rate > 0 and left > 0 else None
            self.write()

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "schema": SCHEMA, "version": __version__, "pid": os.getpid(), "state": self.state,
                "manifest": {"path": str(self.manifest.path), "sha256": self.manifest.sha256},
                "root": str(self.manifest.root),
                "updated": datetime.now(UTC).isoformat(timespec="milliseconds"),
                "components": {n: asdict(c) for n, c in self.components.items()},
                **self.extra,
            }

    def write(self, force: bool = False) -> None:
        with self._lock:  # throttle, snapshot and write in one critical section: see the class docstring
            now = time.monotonic()
            if not force and now - self._written < self.min_interval:
                return
            self._written = now
            text = json.dumps(self.snapshot(), indent=2, sort_keys=True) + "\n"
            try:
                write_text_fast(self.path, text, mode=STATUS_MODE, group_of=self.manifest.root)
            except OSError as e:
                # Status is a view, not state: a full disk must not stop the work it reports.
                if not self._write_failed:
                    logs.get().warning("status.unwritable", path=str(self.path),
                                                             error=e.strerror)
                self._write_failed = True
            else:
                self._write_failed = False


def _forward(old: str, new: str) -> str:
    """`new`, unless it would move back along _FORWARD within a run (error and disabled always win)."""
    if old in _FORWARD and new in _FORWARD and _FORWARD[new] < _FORWARD[old] and old != "ready":
        return old
    return new


def read(path: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data
