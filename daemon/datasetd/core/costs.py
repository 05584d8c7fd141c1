"""What a plan costs: space and inodes until convergence, bytes read and written.

Pure, like the planner it reads; `state.space.space_report` sets these needs
against the filesystems' free space, `datasetd plan` prints both.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from datasetd.config.manifest import Component, Manifest
from datasetd.core.model import Action, ArchiveState, ComponentState, Observed, TarCount
from datasetd.core.planning import loose_path, selected_units, unit_done, unit_paths

BLOCK = 4096


@dataclass(frozen=True)
class Need:
    """Space the plan will consume under `path` (bytes rounded up to blocks, inodes)."""

    component: str
    path: Path
    bytes: int
    inodes: int
    inodes_known: bool = True


def space_needs(manifest: Manifest, observed: Observed,
                counted: Mapping[str, TarCount] | None = None) -> list[Need]:
    """Peak additional space until convergence (archives are deleted only at the end).

    Before the index pass, inodes come from `counted` (tar headers read by `plan`) or from `expect`.
    """
    needs: list[Need] = []
    for comp in manifest.enabled():
        state = observed.components.get(comp.name)
        if state is None:
            continue
        archive = state.archive
        units_missing = [u for u in selected_units(comp, state) if not unit_done(u)]
        archive_needed = comp.unpack == "none" or not archive.indexed or any(
            loose_path(unit_paths(comp, u.name), u) is None for u in units_missing)
        if comp.downloaded and not archive.present and archive_needed:
            needs.append(Need(comp.name, comp.archive, _blocks(comp.size or 0), 1))
        if comp.unpack == "none" or comp.into is None:
            continue
        if not archive.indexed:
            needs.append(_unindexed_need(comp, archive, (counted or {}).get(comp.name)))
            continue
        needs.append(Need(
            comp.name, comp.into,
            sum(_blocks(u.index.bytes) + BLOCK * (u.index.files + u.index.dirs) // 16 for u in units_missing),
            sum(u.index.files + u.index.dirs + 1 for u in units_missing),
        ))
    return needs


def _unindexed_need(comp: Component, archive: ArchiveState, count: TarCount | None) -> Need:
    assert comp.into is not None
    # Upper bound until the index pass: extracted bytes <= tar bytes.
    bound = _blocks(comp.size or archive.size or 0)
    if count is not None and comp.classes is None:
        return Need(comp.name, comp.into, min(bound, _blocks(count.bytes) + BLOCK * (count.files + count.dirs) // 16)
                    if bound else _blocks(count.bytes), count.files + count.dirs + 1)
    exp = comp.expect
    if exp is not None and exp.files is not None:
        return Need(comp.name, comp.into, bound, exp.files + (exp.classes or 0) + 1)
    return Need(comp.name, comp.into, bound, 0, False)


def fetch_bytes(comp: Component, state: ComponentState | None) -> int | None:
    """Bytes still to download (0 for a file source or a verified download; None: size not pinned)."""
    if state is None or not comp.downloaded or not comp.enabled or state.archive.verified:
        return 0
    if state.archive.indexed and all(unit_done(u) for u in selected_units(comp, state)):
        return 0
    return comp.size


def _blocks(n: int) -> int:
    return -(-n // BLOCK) * BLOCK


@dataclass(frozen=True)
class Traffic:
    read: int
    write: int


def traffic(actions: Iterable[Action], manifest: Manifest, observed: Observed) -> Traffic:
    """Bytes the given actions will read and write (for `datasetd plan`); each action type says its own."""
    read = write = 0
    for a in actions:
        r, w = a.traffic(manifest.components[a.component], observed.components[a.component])
        read += r
        write += w
    return Traffic(read, write)
