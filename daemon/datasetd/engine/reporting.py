"""What the status board shows after each round of the executor, and the periodic progress line.

Where it sits: the executor's loop calls `Reporter.show` once per round with what it knows
(observed state, the actions in flight, failures); the summary of each component comes from
`core.summary` (pure), an index pass's bytes from its progress file. Nothing here decides.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from datasetd import logs
from datasetd.archive.indexprogress import read_progress
from datasetd.config.manifest import Manifest
from datasetd.core.ledger import Ledger
from datasetd.core.model import Action, ComponentState, IndexArchive
from datasetd.core.summary import summarize
from datasetd.engine.archivesteps import index_progress_path
from datasetd.state.status import ComponentStatus, StatusBoard

PROGRESS_EVERY = 10.0  # seconds between apply.progress log lines
_NO_STATUS = ComponentStatus()


class Reporter:
    def __init__(self, board: StatusBoard) -> None:
        self.board = board
        self.log = logs.get()
        self._last_progress = time.monotonic()

    def show(self, manifest: Manifest, observed: Mapping[str, ComponentState], running: Iterable[Action],
             failures: Mapping[str, str], ledgers: Mapping[str, Ledger] | None = None) -> None:
        phases: dict[str, set[str]] = {}
        indexing: dict[str, IndexArchive] = {}
        for action in running:
            if type(action).phase is not None:
                phases.setdefault(action.component, set()).add(str(type(action).phase))
            if isinstance(action, IndexArchive):
                indexing[action.component] = action
        for name, comp in manifest.components.items():
            fields = summarize(comp, observed.get(name), phases.get(name, set()), failures.get(name),
                               (ledgers or {}).get(name))
            if fields.get("phase") == "fetching":
                fields = {k: v for k, v in fields.items() if not k.startswith(("bytes", "files"))}
            if name in indexing:
                fields.update(_index_progress(manifest, name, indexing[name]))
            elif self.board.components.get(name, _NO_STATUS).detail.get("step") == "indexing":
                fields["detail"] = {}  # the index pass ended: stop saying it runs
            self.board.update(name, **fields)
        now = time.monotonic()
        if now - self._last_progress >= PROGRESS_EVERY:
            self._last_progress = now
            snap = self.board.snapshot()["components"]
            self.log.info("apply.progress", **{n: f"{c['phase']} {c['files_done']}/{c['files_total']} files"
                                               for n, c in snap.items()})


def _index_progress(manifest: Manifest, name: str, action: IndexArchive) -> dict[str, Any]:
    """An index pass shows archive bytes read so far out of the archive's size (rate and ETA follow)."""
    done = read_progress(index_progress_path(manifest, name))
    if done is None:
        return {}
    try:
        total = action.path.stat().st_size
    except OSError:
        return {}
    return {"phase": "unpacking", "bytes_done": done, "bytes_total": total, "detail": {"step": "indexing"}}
