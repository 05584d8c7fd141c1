"""Observation: read the disk and the journal into `Observed`. Never writes anything.

Cheap by design so a no-op apply stays fast: archives are trusted by
fingerprint (path, size, mtime, inode) against the journal, folders by a
listing of names and sizes; bytes are re-hashed only by `verify`.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from datasetd.config.manifest import Component, Manifest
from datasetd.core import arrangement
from datasetd.core.model import (
    FLAT,
    ArchiveState,
    ComponentState,
    Journal,
    Observed,
    UnitIndex,
    UnitState,
    unproven,
)
from datasetd.core.planning import unit_paths
from datasetd.state.filestats import expected_dirs
from datasetd.state.fswalk import list_files, unchanged_since
from datasetd.state.journal import ArchiveRow, JournalDB, UnitRow
from datasetd.state.safedir import check_own_dir
from datasetd.state.space import inodes_free


def observe(manifest: Manifest, journal: JournalDB) -> Observed:
    """Raises UnsafePath, before anything is planned, when a directory datasetd writes in is a link."""
    for comp in manifest.enabled():
        if comp.into is not None:
            check_own_dir(comp.into)
        check_own_dir(manifest.state_dir / "sha256" / comp.name)
    return Observed(components={c.name: observe_component(c, journal)
                                for c in manifest.components.values()})


def observe_component(comp: Component, journal: JournalDB) -> ComponentState:
    row = journal.archive(comp.name)
    st = _lstat_file(comp.archive)
    present = st is not None
    verified = st is not None and row is not None and _matches(comp, row, st)
    # an archive gone before its digest was checked leaves nothing its units could be proved from
    kept = not present and row is not None and not unproven(row.sha256) and _pins_ok(comp, row)
    archive_sha = row.sha256 if row is not None and (verified or kept) else None
    indexed = comp.unpack != "none" and row is not None and row.indexed and archive_sha is not None
    if comp.unpack == "none":
        indexed = verified
    archive = ArchiveState(present=present, size=st.st_size if st else None, verified=verified,
                           indexed=indexed, proven=archive_sha is None or not unproven(archive_sha))
    units: tuple[UnitState, ...] = ()
    if indexed and comp.unpack != "none" and archive_sha is not None:
        rows = journal.units(comp.name)
        units = tuple(observe_unit(comp, journal, idx, archive_sha, rows.get(idx.name))
                      for idx in journal.unit_index(comp.name, archive_sha))
    free = inodes_free(comp.into) if comp.into is not None and indexed and not archive.proven else None
    return ComponentState(archive=archive, units=units, archive_sha256=archive_sha, inodes_free=free)


def observe_again(comp: Component, journal: JournalDB, state: ComponentState | None, unit: str | None,
                  proven: bool = False, at: int | None = None) -> ComponentState:
    """`state` after a step that changed `unit` (or, with None, the component): only that unit is
    looked at again where the component's archive is known, else the whole component. `at`: the
    unit's position in `state.units` where the caller knows it (a search is a walk over every unit,
    after every step: quadratic in units over an apply)."""
    if unit is None or state is None or not state.archive_sha256:
        return observe_component(comp, journal)
    if at is None or not (0 <= at < len(state.units) and state.units[at].name == unit):
        at = next((p for p, u in enumerate(state.units) if u.name == unit), None)
        if at is None:
            return state
    rows = journal.units(comp.name, unit)
    old = state.units[at]
    seen = observe_unit(comp, journal, old.index, state.archive_sha256, rows.get(old.name), proven)
    units = (*state.units[:at], seen, *state.units[at + 1:])
    # while the archive is being proved, what may start is bounded by the inodes free now
    free = inodes_free(comp.into) if state.inodes_free is not None and comp.into is not None else None
    return replace(state, units=units, inodes_free=free)


def observe_unit(comp: Component, journal: JournalDB, idx: UnitIndex, archive_sha: str,
                 row: UnitRow | None, proven: bool = False) -> UnitState:
    """`proven`: the step that just recorded this unit read its folder back (every file, and the
    member set) a moment ago, so it is intact without a listing (one stat per file, after every
    step of a 1.28 M-file archive); any later look lists it as always."""
    paths = unit_paths(comp, idx.name)
    folder = paths.folder.is_dir() and not paths.folder.is_symlink()
    loose, loose_ok = None, False
    if idx.name != FLAT:
        for candidate in (paths.marked_tar, paths.plain_tar):
            st = _lstat_file(candidate)
            if st is not None:
                loose, loose_ok = candidate.name, st.st_size == idx.size
                break
    state = row.state if row is not None and row.archive_sha256 == archive_sha else Journal.NONE
    recorded: dict[str, int] | None = None

    def sizes() -> dict[str, int]:  # read once, and only when a listing or the arrangement needs it
        nonlocal recorded
        if recorded is None:
            recorded = journal.file_sizes(comp.name, idx.name)
        return recorded

    intact, seen = False, None
    if folder and state is not Journal.NONE and proven:
        intact = True
    elif folder and state is not Journal.NONE:
        assert row is not None
        # Directories are checked once the unit is verified: until then it has no record of them
        # (an archive's empty directory members) but the ones its files imply.
        stats = (lambda: journal.file_stats(comp.name, idx.name)) if state is Journal.VERIFIED else None
        intact, seen = _intact(paths.folder, row, sizes, stats)
    arranged = comp.arrange is not None and folder and state is not Journal.NONE and arrangement.arranged(sizes())
    arranging = comp.arrange is not None and os.path.lexists(paths.arrange_plan)
    return UnitState(index=idx, loose_tar=loose, loose_tar_ok=loose_ok, folder=folder,
                     journal=state, intact=intact, arranged=arranged, arranging=arranging, dirs_seen=seen)


def loose_tar_names(comp: Component) -> frozenset[str]:
    """Units with a loose class tar (`W.tar` or `Z_W.tar`, a regular file) in `into`, by one listing."""
    if comp.into is None or comp.unpack != "class-tars":
        return frozenset()
    try:
        entries = list(os.scandir(comp.into))
    except FileNotFoundError:
        return frozenset()
    names = (e.name.removeprefix("Z_").removesuffix(".tar") for e in entries
             if e.name.endswith(".tar") and e.is_file(follow_symlinks=False))
    return frozenset(names)


def _intact(folder: Path, row: UnitRow, recorded: Callable[[], dict[str, int]],
            stats: Callable[[], bytes | None] | None) -> tuple[bool, str | None]:
    """(names, sizes and directories as recorded, a new fingerprint to keep). An unchanged fingerprint
    proves the member set with one stat per directory; sizes changed in place are deep verification's
    to find. A directory the unit did not have is, like a file it did not have, a folder to repair."""
    if row.dirs is not None and unchanged_since(folder, row.dirs):
        return True, None
    listing = list_files(folder)
    intact = (not listing.problems and listing.files == recorded()
              and (stats is None or listing.dir_names() <= expected_dirs(recorded(), stats())))
    return intact, listing.fingerprint() if intact else None


def _lstat_file(path: Path) -> os.stat_result | None:
    try:
        st = path.lstat()
    except OSError:
        return None
    return st if stat.S_ISREG(st.st_mode) else None


def _matches(comp: Component, row: ArchiveRow, st: os.stat_result) -> bool:
    same_file = (row.path, row.size, row.mtime_ns, row.ino, row.dev) == (
        str(comp.archive), st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)
    return same_file and _pins_ok(comp, row)


def _pins_ok(comp: Component, row: ArchiveRow) -> bool:
    """The recorded digests are still the ones the manifest asks for (it may have been edited).
    An index recorded before the digest was checked (`unproven`) stands while the archive is pinned:
    ProveArchive checks the digest against the pins in force."""
    if unproven(row.sha256):
        return (comp.sha256 is not None or comp.md5 is not None) and (comp.size is None or comp.size == row.size)
    return ((comp.sha256 is None or comp.sha256 == row.sha256)
            and (comp.md5 is None or comp.md5 == row.md5)
            and (comp.size is None or comp.size == row.size))
