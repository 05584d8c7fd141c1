"""How each action type runs and how its result is recorded: one table, `STEPS`, the executor's hands.

The planner decides *what* (core/model.py says each Action type's phase and
where it runs); this table says *how*: `work` turns the action into a callable
and its arguments for that place (a worker process, a fetch thread, or the
executor inline), `record` writes the outcome to journal, digest lists and log.
Adding an action kind means one model class and one row here; a test checks
the table covers every concrete Action type.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from datasetd import logs
from datasetd.archive import arrange, extract, headerindex, unpack, verify
from datasetd.archive.digest import check_pins
from datasetd.config.manifest import Component, Manifest
from datasetd.core.model import (
    FLAT,
    UNPROVEN,
    Action,
    AdoptUnit,
    ArrangeByClass,
    DeleteArchive,
    DeleteClassTar,
    ExtractUnit,
    Fetch,
    IndexArchive,
    MarkProcessed,
    ProveArchive,
    UnitAction,
    VerifyUnit,
    unproven,
)
from datasetd.core.planning import unit_paths
from datasetd.engine import digestlists
from datasetd.errors import CorruptArchive, DatasetdError, PermanentError, TemporaryError
from datasetd.sources.base import Fetched, FetchProgress, Source
from datasetd.state.durable import write_text_atomic, write_text_fast
from datasetd.state.journal import ArchiveRow, JournalDB
from datasetd.state.observe import loose_tar_names
from datasetd.state.status import StatusBoard

A = TypeVar("A", bound=Action)
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


@dataclass(frozen=True)
class Step(Generic[A]):
    """`work` says what to call where the action type runs; `record` returns True when the unit is
    verified and waits for the group commit."""

    work: Callable[[Hands, A], Work]
    record: Callable[[Hands, A, Any], bool]


# ---- fetch and index ---------------------------------------------------------------------------


def _fetch_work(hands: Hands, action: Fetch) -> Work:
    return hands.fetch, (hands.component(action),)


def _fetch_record(hands: Hands, action: Fetch, fetched: Fetched) -> bool:
    st = fetched.path.stat()
    hands.journal.record_archive(action.component, ArchiveRow(
        str(fetched.path), st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev, fetched.sha256,
        fetched.md5, indexed=False), None)
    hands.journal.step(action.component, "", action.kind, "ok")
    return False


def _index_work(hands: Hands, action: IndexArchive) -> Work:
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
        hands.made_into.add(comp.name)  # a refused archive removes it again (_remove_unproven)
    return f"{UNPROVEN}{uuid.uuid4().hex}"


def _prove_work(hands: Hands, action: ProveArchive) -> Work:
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


def _prove_record(hands: Hands, action: ProveArchive, result: unpack.IndexResult | PermanentError) -> bool:
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
        _remove_unproven(hands, comp, unit)
    # how many units were extracting, or extracted and waiting, when the verdict came in: the overlap
    hands.log.info("archive.proved", component=comp.name, path=str(comp.archive), sha256=result.sha256,
                   files=sum(u.files for u in result.units), refused=len(refused), units_started=len(busy))
    hands.journal.step(comp.name, "", action.kind, "ok", f"{len(busy)} units started before the verdict")
    return False


def _refused(hands: Hands, comp: Component, busy: int) -> None:
    hands.refused.add(comp.name)
    forgotten = hands.journal.forget_unproven(comp.name)
    for unit in forgotten:
        _remove_unproven(hands, comp, unit)
    hands.log.error("archive.refused", component=comp.name, path=str(comp.archive),
                    units_removed=len(forgotten), units_running=busy - len(forgotten))


def discard_unproven(hands: Hands, action: UnitAction) -> None:
    """A unit step that ended after its archive's digest broke the pin: what it made is removed."""
    if isinstance(action, ExtractUnit) and not action.replace:
        _remove_unproven(hands, hands.component(action), action.unit)


def _remove_unproven(hands: Hands, comp: Component, unit: str) -> None:
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


def _index_record(hands: Hands, action: IndexArchive, result: unpack.IndexResult) -> bool:
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


# ---- units -------------------------------------------------------------------------------------


# Both return the fingerprint of the files read back (state/filestats.py) beside the result.
def _extract_work(hands: Hands, action: ExtractUnit) -> Work:
    return verify.extract_fingerprinted, (action.origin, action.folder, action.partial, action.old,
                                      action.expected_bytes)


def _adopt_work(hands: Hands, action: AdoptUnit) -> Work:
    return verify.adopt_fingerprinted, (action.origin, action.folder, action.partial, action.old,
                                    action.expected_bytes)


def _extract_record(hands: Hands, action: ExtractUnit, result: tuple[extract.Extracted, verify.Taken]) -> bool:
    extracted, taken = result
    problem = _refused_meanwhile(hands, action)
    if problem is not None:
        # Started before the full index pass, which then refused this class: never recorded.
        _remove_unproven(hands, hands.component(action), action.unit)
        hands.journal.step(action.component, action.unit, action.kind, "refused", problem)
        return False
    _record_unit(hands, action.component, action.unit, extracted,
                 "replaced" if action.replace else "extracted", taken=taken)
    hands.journal.step(action.component, action.unit, action.kind, "ok")
    return _read_back(hands, action, extracted)


def _refused_meanwhile(hands: Hands, action: ExtractUnit) -> str | None:
    """The problem the full index pass found in this unit's class tar after its extraction began."""
    archive = hands.journal.archive(action.component)
    if archive is None or unproven(archive.sha256) or action.origin.loose:
        return None
    index = hands.journal.unit_index(action.component, archive.sha256, action.unit)
    return index[0].problem if index else None


def _adopt_record(hands: Hands, action: AdoptUnit,
                  result: tuple[tuple[bool, extract.Extracted], verify.Taken]) -> bool:
    (adopted, extracted), taken = result
    _record_unit(hands, action.component, action.unit, extracted,
                 "adopted" if adopted else "replaced", taken=taken)
    hands.journal.step(action.component, action.unit, action.kind, "ok")
    return _read_back(hands, action, extracted)


def _read_back(hands: Hands, action: ExtractUnit | AdoptUnit, result: extract.Extracted) -> bool:
    """A unit read back while it was extracted is verified: it waits for the group commit only."""
    if result.read_back:
        hands.journal.step(action.component, action.unit, VerifyUnit.__name__, "ok", "read back while extracted")
    return result.read_back


def _record_unit(hands: Hands, component: str, unit: str, result: extract.Extracted, verb: str, *,
                 taken: verify.Taken) -> None:
    archive = hands.journal.archive(component)
    assert archive is not None  # a unit is extracted only from an indexed archive
    prefix = "" if unit == FLAT else f"{unit}/"
    digest_file = digestlists.list_path(hands.manifest, component, unit)
    # Not flushed here: the group commit's syncfs covers it before VERIFIED is recorded.
    write_text_fast(digest_file, verify.digest_list(result.files, prefix))
    stats, dirs = taken
    hands.journal.record_extracted(component, unit, archive.sha256, result.files, stats=stats, dirs=dirs)
    hands.log.info(hands.event(component, verb), component=component, unit=unit, files=len(result.files),
                   bytes=sum(f[1] for f in result.files))


def _verify_work(hands: Hands, action: VerifyUnit) -> Work:
    return verify.prove_folder, (action.folder, hands.journal.files(action.component, action.unit))


def _verify_record(hands: Hands, action: VerifyUnit, result: tuple[list[str], bytes | None]) -> bool:
    comp, unit = action.component, action.unit
    problems, stats = result
    if not problems:
        if stats is not None:
            hands.journal.record_stats(comp, unit, stats)
        hands.journal.step(comp, unit, action.kind, "ok")
        return True
    for line in problems[:20]:
        hands.log.error("verify.mismatch", component=comp, unit=unit, problem=line)
    # Forget the record: the folder is now of unknown provenance, and the planner
    # adopts (compares) or re-extracts it from its tar. The tar was never deleted.
    hands.journal.forget_unit(comp, unit)
    hands.journal.step(comp, unit, action.kind, "mismatch", problems[0])
    raise TemporaryError(f"{problems[0]} (and {len(problems) - 1} more); re-extracting", delay=0.0)


# ---- val arranged by class ----------------------------------------------------------------------


def _arrange_work(hands: Hands, action: ArrangeByClass) -> Work:
    comp = hands.component(action)
    spec = comp.arrange
    assert spec is not None  # the planner arranges only components that ask for it
    kit = hands.manifest.components[spec.devkit].into if spec.devkit is not None else None
    sources = arrange.LabelSources(devkit_tree=kit, csv=spec.csv, cross_check=spec.cross_check)
    return arrange.arrange_by_class, (comp.name, action.folder, action.plan_file,
                                      hands.journal.files(comp.name, action.unit), sources, comp.expect)


def _arrange_record(hands: Hands, action: ArrangeByClass, result: arrange.Arranged) -> bool:
    """The moved files become the record (same bytes, new names); the class index files; then the plan goes."""
    comp = hands.component(action)
    assert comp.into is not None
    root = hands.manifest.root
    archive = hands.journal.archive(comp.name)
    assert archive is not None  # arranged only once extracted from an indexed archive
    digest_file = digestlists.list_path(hands.manifest, comp.name, action.unit)
    # Flushed: the renames are already durable (arrange fsyncs the folders), the list must say so too.
    write_text_atomic(digest_file, verify.digest_list(result.files, ""))
    hands.journal.record_extracted(comp.name, action.unit, archive.sha256, result.files)
    hands.journal.mark_verified(comp.name, [action.unit])  # durable; the bytes were verified before the move
    write_text_atomic(root / "classes.tsv", arrange.classes_tsv(result.classes))
    labels_name = "val_labels.csv" if comp.name == "val" else f"{comp.name}_labels.csv"
    write_text_atomic(root / labels_name,
                      arrange.labels_csv(str(comp.into.relative_to(root)), result.moved, result.classes))
    # If power loss undoes this unlink, the plan runs again: every file is already in place, a no-op.
    action.plan_file.unlink(missing_ok=True)
    hands.log.info("val.arranged", component=comp.name, files=len(result.moved), classes=len(result.classes))
    hands.journal.step(comp.name, action.unit, action.kind, "ok")
    return False


# ---- renames and deletes (inline: each is one system call) ---------------------------------------


def _mark(action: MarkProcessed) -> None:
    # Not flushed: if power loss undoes it, W.tar is simply marked again.
    action.tar.rename(action.marked)


def _delete_class_tar_work(hands: Hands, action: DeleteClassTar) -> Work:
    # The folder is VERIFIED (flushed, journal durable) before this runs, and is re-proved in the worker.
    folder = unit_paths(hands.component(action), action.unit).folder
    return verify.reprove_then_unlink, (action.tar, [_dependent(hands, action.component, action.unit, folder)])


def _delete_archive_work(hands: Hands, action: DeleteArchive) -> Work:
    # Every unit is VERIFIED and durable; each one is re-proved in the worker before the unlink.
    comp = hands.component(action)
    units = [_dependent(hands, comp.name, unit, unit_paths(comp, unit).folder)
             for unit in sorted(hands.journal.units(comp.name))]
    return verify.reprove_then_unlink, (action.path, units)


def _dependent(hands: Hands, component: str, unit: str, folder: Path) -> verify.Dependent:
    return unit, folder, hands.journal.files(component, unit), hands.journal.file_stats(component, unit)


def _deleted(logged: Callable[[Hands, Any, Any], bool]) -> Callable[[Hands, Any, Any], bool]:
    """The unlink happened (`logged` records it), or it was refused: a folder no longer matches its record."""

    def record(hands: Hands, action: Any, reproved: verify.Reproved) -> bool:
        hands.log.info("delete.reproved", component=action.component, target=str(fields_of(action)),
                       fingerprinted=reproved.fingerprinted, rehashed=reproved.rehashed)
        failed = reproved.failed
        if not failed:
            return logged(hands, action, failed)
        for unit, problems in failed:
            hands.log.error("delete.refused", component=action.component, unit=unit,
                            kept=str(fields_of(action)), problem=problems[0], problems=len(problems))
            # Forget the record: the planner adopts (compares and repairs) the folder from the kept copy.
            hands.journal.forget_unit(action.component, unit)
        first = failed[0][1][0]
        hands.journal.step(action.component, action.key[1], action.kind, "mismatch", first)
        raise TemporaryError(f"{first}: kept {fields_of(action)}, repairing the folder first", delay=0.0)

    def fields_of(action: Any) -> object:
        return action.tar if isinstance(action, DeleteClassTar) else action.path
    return record


def _logged(event: str, **fields: Callable[[Any], object]) -> Callable[[Hands, Any, Any], bool]:
    def record(hands: Hands, action: Any, _result: Any) -> bool:
        unit = action.key[1]
        hands.log.info(event, component=action.component, **({"unit": unit} if unit else {}),
                       **{k: str(f(action)) for k, f in fields.items()})
        hands.journal.step(action.component, unit, action.kind, "ok")
        return False
    return record


def _inline(fn: Callable[[Any], None]) -> Callable[[Hands, Any], Work]:
    return lambda _hands, action: (fn, (action,))


STEPS: Mapping[type[Action], Step[Any]] = {
    Fetch: Step(_fetch_work, _fetch_record),
    IndexArchive: Step(_index_work, _index_record),
    ProveArchive: Step(_prove_work, _prove_record),
    ExtractUnit: Step(_extract_work, _extract_record),
    AdoptUnit: Step(_adopt_work, _adopt_record),
    VerifyUnit: Step(_verify_work, _verify_record),
    ArrangeByClass: Step(_arrange_work, _arrange_record),
    MarkProcessed: Step(_inline(_mark), _logged("class.marked", tar=lambda a: a.marked)),
    DeleteClassTar: Step(_delete_class_tar_work, _deleted(_logged("class.tar_deleted", tar=lambda a: a.tar))),
    DeleteArchive: Step(_delete_archive_work, _deleted(_logged("archive.deleted", path=lambda a: a.path))),
}
