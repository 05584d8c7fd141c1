"""`apply` on a terminal: one live progress display per component (rich), fed from the StatusBoard.

The board is the one place every thread reports to (status.json is written from it), so
the display polls its snapshot a few times a second and shows the same figures as
`datasetd status`: phase, bytes, files, classes, rate and ETA. Not on a terminal, apply
logs JSON lines instead and this module is not used.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TaskProgressColumn, TextColumn

from datasetd.core.summary import figure_parts
from datasetd.state.status import StatusBoard

REFRESH = 0.25  # seconds between polls of the board
FIGURES_MAX = 90  # characters: the bar keeps its width on an 80-column terminal's neighbours


def figures(c: Mapping[str, Any]) -> str:
    """"1.2 MiB/4.0 MiB · 16/48 files · 4/8 classes · 3.1 MiB/s · ETA 12s": what is known, in that order."""
    parts = figure_parts(c, "/", lambda s: f"ETA {int(s)}s")
    if c.get("retry"):
        parts.append(str(c["retry"]))
    if c.get("last_error"):
        parts.append("error (in full below)")
    text = " · ".join(parts)
    return text if len(text) <= FIGURES_MAX else text[: FIGURES_MAX - 1] + "…"


class LiveProgress:
    def __init__(self, board: StatusBoard, console: Console | None = None) -> None:
        self.board = board
        self.progress = Progress(
            TextColumn("{task.fields[name]:<12} {task.fields[phase]:<10}"), BarColumn(bar_width=30),
            TaskProgressColumn(), TextColumn("{task.fields[figures]}"),
            console=console or Console(stderr=True), refresh_per_second=8, transient=False,
        )
        self.tasks: dict[str, TaskID] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="progress", daemon=True)

    def _poll(self) -> None:
        while not self._stop.wait(REFRESH):
            self.refresh()

    def refresh(self) -> None:
        for name, c in sorted(self.board.snapshot()["components"].items()):
            total = int(c.get("bytes_total") or 0)
            done = int(c.get("bytes_done") or 0)
            if not total:  # nothing to count yet (or a bare file): full when ready, empty before
                total, done = 1, 1 if c.get("phase") == "ready" else 0
            fields = {"name": name, "phase": c.get("phase"), "figures": figures(c)}
            if name not in self.tasks:
                self.tasks[name] = self.progress.add_task(name, total=total, completed=done, **fields)
            else:
                self.progress.update(self.tasks[name], total=total, completed=done, **fields)

    def __enter__(self) -> LiveProgress:
        self.progress.start()
        self.refresh()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.refresh()  # the final figures stay on screen
        self.progress.stop()


@contextmanager
def live(board: StatusBoard | None) -> Iterator[None]:
    if board is None:
        yield
        return
    with LiveProgress(board):
        yield
