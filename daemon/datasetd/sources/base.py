"""The interface between the executor and a transport.

A source's `fetch` is an *action* in pooch's sense: the decision to fetch was
already made by the planner. It must:
- write into a temporary name next to `component.archive` (same filesystem),
  hashing while writing (sha256 always, md5 too when the manifest pins it);
- check size and every digest the manifest pins before the final atomic
  rename to `component.archive` (raise DigestMismatch otherwise);
- be resumable: a crash or SIGKILL at any point leaves state the next call
  continues from, never a file at `component.archive` that is not verified;
- report progress through `progress` at most a few times a second;
- return promptly (raising TemporaryError) when `stop` is set;
- raise PermanentError subclasses for what a retry cannot fix and
  TemporaryError(delay) for what it may; never leak credentials in messages.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from datasetd.config.manifest import Component


@dataclass(frozen=True)
class Fetched:
    """A verified archive at its final path, with the digests computed while it was written."""

    path: Path
    size: int
    sha256: str
    md5: str | None = None


@dataclass(frozen=True)
class FetchProgress:
    bytes_done: int
    bytes_total: int | None
    rate: float = 0.0  # bytes per second, smoothed
    # Transport detail for status.json: current URL (no secrets), peers, health hint...
    detail: Mapping[str, object] = field(default_factory=dict)


ProgressFn = Callable[[FetchProgress], None]


class Source(Protocol):
    def fetch(self, component: Component, progress: ProgressFn, stop: threading.Event) -> Fetched:
        """Make `component.archive` exist and match the manifest; see the module docstring."""
        ...
