"""What every step acts through and what its work is: `Hands` (the journal, the status board, the
transports, the manifest in force) and `Work` (a callable and its arguments).

One Hands per executor (engine/executor.py); every step function (engine.archivesteps, unitsteps,
deletesteps) takes it first, and engine.steps.STEPS says which function serves which Action type.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

from datasetd import logs
from datasetd.config.manifest import Component, Manifest
from datasetd.core.model import Action, UnitAction
from datasetd.errors import PermanentError
from datasetd.sources.base import Fetched, FetchProgress, Source
from datasetd.state.journal import JournalDB
from datasetd.state.status import StatusBoard

Work = tuple[Callable[..., Any], tuple[Any, ...]]


class Hands:
    """What steps act through: the journal, the status board, the transports, the manifest in force."""

    def __init__(self, manifest: Manifest, journal: JournalDB, board: StatusBoard,
                 sources: Mapping[str, Source]) -> None:
        self.manifest = manifest
        self.journal = journal
        self.board = board
        self.sources = sources
        self.stop = threading.Event()
        self.fetch_stops: dict[str, threading.Event] = {}
        self.log = logs.get()
        # the unit steps of a component running or waiting for the group commit (the executor's count)
        self.units_busy: Callable[[str], list[UnitAction]] = lambda _component: []
        self.made_into: set[str] = set()  # components whose `into` this run created for an unproven archive
        self.refused: set[str] = set()  # components whose archive broke its pin since it was last indexed

    def event(self, component: str, verb: str) -> str:
        unpack_kind = self.manifest.components[component].unpack
        return f"{'class' if unpack_kind == 'class-tars' else 'tree'}.{verb}"

    def component(self, action: Action) -> Component:
        return self.manifest.components[action.component]

    def fetch(self, comp: Component) -> Fetched:
        source = self.sources.get(comp.source.kind)
        if source is None:
            raise PermanentError(f"components.{comp.name}: source {comp.source.kind!r} is not available in this build")

        def progress(p: FetchProgress) -> None:
            self.board.update(comp.name, phase="fetching", bytes_done=p.bytes_done,
                              bytes_total=p.bytes_total or 0, detail=dict(p.detail))

        stop = self.fetch_stops[comp.name] = threading.Event()
        if self.stop.is_set():
            stop.set()
        try:
            return source.fetch(comp, progress, stop)
        finally:
            self.fetch_stops.pop(comp.name, None)

    def stop_fetches(self) -> None:
        """Shutdown: every running download stops, and none starts."""
        self.stop.set()
        self.stop_fetches_of(set(self.fetch_stops))

    def stop_fetches_of(self, names: set[str]) -> None:
        for name, event in list(self.fetch_stops.items()):
            if name in names:
                event.set()
