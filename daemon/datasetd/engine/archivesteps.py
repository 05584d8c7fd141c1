"""The steps of a whole archive: fetch it, index it, and prove it against its pin while its units extract.

Rows of engine.steps.STEPS. An index read from the outer headers alone is recorded under an
unproven key until ProveArchive's verdict; a broken pin forgets and removes every unit extracted
meanwhile (`remove_unproven`; engine.unitsteps removes a class refused after its extraction began
with it too, and the executor a late unit step's folder through `discard_unproven`).
"""

from __future__ import annotations

import contextlib
import functools
import threading
import uuid
from pathlib import Path

from datasetd.archive import extract, headerindex, unpack
from datasetd.archive.digest import check_pins
from datasetd.config.manifest import Component, Manifest
from datasetd.core.model import UNPROVEN, ExtractUnit, Fetch, IndexArchive, ProveArchive, UnitAction, unproven
from datasetd.core.planning import unit_paths
from datasetd.engine import digestlists
from datasetd.engine.hands import Hands, Work
from datasetd.errors import CorruptArchive, DatasetdError, PermanentError
from datasetd.sources.base import Fetched
from datasetd.state.journal import ArchiveRow
from datasetd.state.observe import loose_tar_names


def fetch_work(hands: Hands, action: Fetch) -> Work:
    return hands.fetch, (hands.component(action),)


def fetch_record(hands: Hands, action: Fetch, fetched: Fetched) -> bool:
    st = fetched.path.stat()
    hands.journal.record_archive(action.component, ArchiveRow(
        str(fetched.path), st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev, fetched.sha256,
        fetched.md5, indexed=False), None)
    hands.journal.step(action.component, "", action.kind, "ok")
    return False


def index_work(hands: Hands, action: IndexArchive) -> Work:
    comp = hands.component(action)
    size = comp.archive.stat().st_size
    if comp.size is not None and size != comp.size:
        raise PermanentError(f"{comp.archive}: size is {size} bytes, components.{comp.name}.size says "
                             f"{comp.size}; the file is incomplete or the manifest is wrong")
    # A pinned archive proves its in-place units; only loose class tars need a digest of their range.
    pinned = comp.sha256 is not None or comp.md5 is not None
    digests = loose_tar_names(comp) if pinned else None
    progress = index_progress_path(hands.manifest, comp.name)
    progress.parent.mkdir(mode=0o700, exist_ok=True)
    if pinned and comp.unpack == "class-tars" and comp.expect is None and comp.classes is None:
        # The outer headers only: ProveArchive (the full pass, digest and members) runs while the
        # units are extracted, as many at a time as surely fit in the free inodes (planning's
        # _while_proving). An `expect` or a subset needs the members counted before any work.
        return (functools.partial(headerindex.index_headers, progress=progress),
                (action.path, digests or frozenset()))
    return (functools.partial(unpack.index_archive, md5=comp.md5 is not None, unit_digests=digests,
                              progress=progress),
            (action.path, comp.unpack))


def _unproven_key(hands: Hands, comp: Component) -> str:
    """The key an index read from the outer headers alone is recorded under until ProveArchive's verdict."""
    if comp.into is not None and not comp.into.exists():
        hands.made_into.add(comp.name)  # a refused archive removes it again (remove_unproven)
    return f"{UNPROVEN}{uuid.uuid4().hex}"


def prove_work(hands: Hands, action: ProveArchive) -> Work:
    comp = hands.component(action)
    row = hands.journal.archive(comp.name)
    assert row is not None and unproven(row.sha256)  # planned only for an index not yet proved
    loose = frozenset(u.name for u in hands.journal.unit_index(comp.name, row.sha256) if u.sha256)
    return (functools.partial(_full_index, md5=comp.md5 is not None, unit_digests=loose),
            (action.path, (row.size, row.mtime_ns, row.ino)))


def _full_index(path: Path, fingerprint: tuple[int, int, int], md5: bool,
                unit_digests: frozenset[str]) -> unpack.IndexResult | PermanentError:
    """The full index pass (digest, every member checked and counted) of the file the outer headers
    were read from, in a process of its own (a stop kills it). A refusal (another file by now, a tar
    that cannot be read) is returned, not raised: its record forgets and removes what was extracted
    meanwhile, as for a broken pin."""
    try:
        result = headerindex.index_members(path, unit_digests, md5=md5, stop=threading.Event())
    except PermanentError as e:
        return e
    if (result.size, result.mtime_ns, result.ino) != fingerprint:
        return CorruptArchive(str(path), "changed since it was indexed; wait until it is complete")
    return result


def prove_record(hands: Hands, action: ProveArchive, result: unpack.IndexResult | PermanentError) -> bool:
    """The verdict: a match records the full index under the real digest and keys every unit extracted
    meanwhile by it (they may now be committed verified); a broken pin or a refused archive forgets
    and removes them. A class the full pass refuses (a problem its extraction could not see, e.g. its
    end marker) is forgotten and removed too: the planner then reports it, as for any refused class."""
    comp = hands.component(action)
    row = hands.journal.archive(comp.name)
    assert row is not None and unproven(row.sha256)
    busy = hands.units_busy(comp.name)
    try:
        if isinstance(result, PermanentError):
            raise result
        check_pins(comp, result.size, result.sha256, result.md5)
    except DatasetdError:
        _refused(hands, comp, len(busy))
        raise
    refused = {u.name for u in result.units if u.problem}
    extracted = hands.journal.prove_archive(comp.name, row.sha256, ArchiveRow(
        str(comp.archive), result.size, result.mtime_ns, result.ino, result.dev, result.sha256,
        result.md5, indexed=True), result.units)
    for unit in sorted(refused & set(extracted)):
        hands.journal.forget_unit(comp.name, unit)
        remove_unproven(hands, comp, unit)
    # how many units were extracting, or extracted and waiting, when the verdict came in: the overlap
    hands.log.info("archive.proved", component=comp.name, path=str(comp.archive), sha256=result.sha256,
                   files=sum(u.files for u in result.units), refused=len(refused), units_started=len(busy))
    hands.journal.step(comp.name, "", action.kind, "ok", f"{len(busy)} units started before the verdict")
    return False


def _refused(hands: Hands, comp: Component, busy: int) -> None:
    hands.refused.add(comp.name)
    forgotten = hands.journal.forget_unproven(comp.name)
    for unit in forgotten:
        remove_unproven(hands, comp, unit)
    hands.log.error("archive.refused", component=comp.name, path=str(comp.archive),
                    units_removed=len(forgotten), units_running=busy - len(forgotten))


def discard_unproven(hands: Hands, action: UnitAction) -> None:
    """A unit step that ended after its archive's digest broke the pin: what it made is removed."""
    if isinstance(action, ExtractUnit) and not action.replace:
        remove_unproven(hands, hands.component(action), action.unit)


def remove_unproven(hands: Hands, comp: Component, unit: str) -> None:
    """Remove a folder extracted (into a place that was empty) from an archive whose digest then broke
    its pin, its digest list, and `into` once empty if this run made it: the tree is as it was.
    Not flushed: if power loss undoes it, the folder is unrecorded and compared with its tar next pass."""
    assert comp.into is not None
    extract.clear(unit_paths(comp, unit).folder)
    digestlists.list_path(hands.manifest, comp.name, unit).unlink(missing_ok=True)
    if comp.name in hands.made_into:
        with contextlib.suppress(OSError):  # not empty: another unit is still being extracted
            comp.into.rmdir()


def index_progress_path(manifest: Manifest, component: str) -> Path:
    """Where a running index pass of `component` counts its bytes (archive.indexprogress.ProgressFile)."""
    return manifest.state_dir / "progress" / f"{component}.index"


def index_record(hands: Hands, action: IndexArchive, result: unpack.IndexResult) -> bool:
    comp = hands.component(action)
    hands.refused.discard(comp.name)
    sha256, md5 = result.sha256, result.md5
    if not sha256:  # the outer headers alone were read
        sha256 = _unproven_key(hands, comp)
    else:
        check_pins(comp, result.size, sha256, md5)
    if comp.sha256 is None and comp.md5 is None:
        hands.log.warning("archive.unpinned", component=comp.name, sha256=result.sha256,
                          hint=f'add sha256 = "{result.sha256}" to components.{comp.name}')
    hands.journal.record_archive(comp.name, ArchiveRow(
        str(comp.archive), result.size, result.mtime_ns, result.ino, result.dev, sha256,
        md5, indexed=True), result.units)
    problems = [u for u in result.units if u.problem]
    hands.log.info("archive.indexed", component=comp.name, path=str(comp.archive), bytes=result.size,
                   units=len(result.units), files=sum(u.files for u in result.units), refused=len(problems))
    hands.journal.step(comp.name, "", action.kind, "ok")
    return False
