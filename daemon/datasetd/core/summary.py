"""From observed state to the per-component figures shown in status.json and `datasetd status`."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from datasetd.config.manifest import Component
from datasetd.core.model import ComponentState, Journal
from datasetd.core.planning import is_ready, selected_units, unit_done


def summarize(comp: Component, state: ComponentState | None, running: Collection[str] = (),
              error: str | None = None) -> dict[str, Any]:
    """Phase and done/total counters; `running` holds the phases (Action.phase) of the steps in flight."""
    out: dict[str, Any] = {"last_error": error}
    if not comp.enabled:
        out["phase"] = "disabled"
        return out
    if state is None:
        out["phase"] = "pending"
        return out
    units = selected_units(comp, state)
    if units:
        done = [u for u in units if unit_done(u)]
        verified = [u for u in units if u.journal is Journal.VERIFIED and u.folder and u.intact]
        out.update(
            bytes_done=sum(u.index.bytes for u in done), bytes_total=sum(u.index.bytes for u in units),
            files_done=sum(u.index.files for u in done), files_total=sum(u.index.files for u in units),
        )
        if comp.unpack == "class-tars":
            out.update(classes_done=len(verified), classes_total=len(units))
    if error is not None:
        out["phase"] = "error"
    elif is_ready(comp, state):
        out["phase"] = "ready"
    elif "fetching" in running:
        out["phase"] = "fetching"
    elif "verifying" in running and "unpacking" not in running:
        out["phase"] = "verifying"
    elif running:
        out["phase"] = "unpacking"
    else:
        out["phase"] = "pending"
    return out
