"""The `sha256sum -c` lists under <root>/.datasetd/sha256/<component>/: where each lives, and which are lost.

Every recorded unit has one, written when the unit is recorded (engine/unitsteps.py). The journal holds
the same names and digests, so a deleted list is rewritten from it by `apply` (byte-identical to the
one written at extraction) and named by `verify`. Finding the lost ones costs one directory listing
per component, so the no-op apply stays one stamp per class.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from datasetd import logs
from datasetd.archive.verify import digest_list
from datasetd.config.manifest import Manifest
from datasetd.core.model import FLAT
from datasetd.state.durable import write_text_atomic
from datasetd.state.journal import JournalDB


def list_path(manifest: Manifest, component: str, unit: str) -> Path:
    name = component if unit == FLAT else unit
    return manifest.state_dir / "sha256" / component / f"{name}.sha256"


def render(journal: JournalDB, component: str, unit: str) -> str:
    """The list as the extraction wrote it: names relative to the component's `into`."""
    return digest_list(journal.files(component, unit), "" if unit == FLAT else f"{unit}/")


def lost(manifest: Manifest, units: Iterable[tuple[str, str]]) -> list[tuple[str, str, Path]]:
    """(component, unit, path) of each recorded unit whose list is not there (one listing per component)."""
    present: dict[str, set[str]] = {}
    out = []
    for component, unit in units:
        if component not in present:
            try:
                with os.scandir(manifest.state_dir / "sha256" / component) as entries:
                    present[component] = {e.name for e in entries if e.is_file(follow_symlinks=False)}
            except (FileNotFoundError, NotADirectoryError):
                present[component] = set()
        path = list_path(manifest, component, unit)
        if path.name not in present[component]:
            out.append((component, unit, path))
    return out


def rewrite_lost(manifest: Manifest, journal: JournalDB, units: Iterable[tuple[str, str]]) -> int:
    """Write again, from the journal, every list of `units` that was deleted. Returns how many."""
    missing = lost(manifest, units)
    for component, unit, path in missing:
        # Atomic and flushed: a crash leaves the old state (no list) or the whole list, never a torn one.
        write_text_atomic(path, render(journal, component, unit))
        logs.get().warning("digests.rewritten", component=component, unit=unit, path=str(path))
    return len(missing)
