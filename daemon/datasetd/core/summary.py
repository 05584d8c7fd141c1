"""From observed state to the per-component figures shown in status.json and `datasetd status`."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any

from datasetd.config.manifest import Component
from datasetd.core.ledger import Ledger, follow
from datasetd.core.model import ComponentState
from datasetd.core.planning import ledger_ready


def summarize(comp: Component, state: ComponentState | None, running: Collection[str] = (),
              error: str | None = None, ledger: Ledger | None = None) -> dict[str, Any]:
    """Phase and done/total counters; `running` holds the phases (Action.phase) of the steps in flight.
    `ledger`: the one of `state` where the caller keeps one (the executor, every round)."""
    out: dict[str, Any] = {"last_error": error}
    if not comp.enabled:
        out["phase"] = "disabled"
        return out
    if state is None:
        out["phase"] = "pending"
        return out
    if ledger is None or ledger.state is not state or ledger.comp is not comp:
        ledger = follow(None, comp, state)
    figures = ledger.progress
    if figures.units:
        out.update(bytes_done=figures.bytes_done, bytes_total=figures.bytes_total,
                   files_done=figures.files_done, files_total=figures.files_total)
        if comp.unpack == "class-tars":
            out.update(classes_done=figures.verified, classes_total=figures.units)
    if error is not None:
        out["phase"] = "error"
    elif ledger_ready(ledger, comp):
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


# ---- how the figures read, on the console, the web page and `datasetd plan` ---------------------


def human_bytes(n: float) -> str:
    """1.5 KiB, 3.2 GiB: binary units, one decimal."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def figure_parts(c: Mapping[str, Any], of: str, eta: Callable[[float], str]) -> list[str]:
    """What is known of a component's progress, in order: bytes, files, classes, rate, ETA."""
    parts = []
    if c.get("bytes_total"):
        parts.append(f"{human_bytes(c.get('bytes_done') or 0)}{of}{human_bytes(c['bytes_total'])}")
    if c.get("files_total"):
        parts.append(f"{c.get('files_done', 0):,}{of}{c['files_total']:,} files")
    if c.get("classes_total"):
        parts.append(f"{c.get('classes_done', 0):,}{of}{c['classes_total']:,} classes")
    if c.get("rate"):
        parts.append(f"{human_bytes(c['rate'])}/s")
    if (c.get("eta_seconds") or 0) >= 1:
        parts.append(eta(c["eta_seconds"]))
    return parts
