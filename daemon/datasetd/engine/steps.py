"""How each action kind is started and how its result is recorded (the executor's hands)."""

from __future__ import annotations

import concurrent.futures as cf
import errno
import os
import threading
from collections.abc import Mapping
from typing import Any

from datasetd import logs
from datasetd.archive import unpack as unpacking
from datasetd.archive import verify as verifying
from datasetd.config.manifest import Component, Manifest
from datasetd.core.model import (
    FLAT,
    Action,
    AdoptUnit,
    DeleteArchive,
    DeleteClassTar,
    ExtractUnit,
    Fetch,
    IndexArchive,
    MarkProcessed,
    VerifyUnit,
)
from datasetd.errors import DatasetdError, DigestMismatch, PermanentError, TemporaryError
from datasetd.sources.base import Fetched, FetchProgress, Source
from datasetd.state.durable import write_text_fast
from datasetd.state.journal import ArchiveRow, JournalDB
from datasetd.state.status import StatusBoard


class StepRunner:
    def __init__(self, manifest: Manifest, journal: JournalDB, board: StatusBoard,
                 sources: Mapping[str, Source]) -> None:
        self.manifest = manifest
        self.journal = journal
        self.board = board
        self.sources = sources
        self.procs: cf.ProcessPoolExecutor | None = None
        self.threads: cf.ThreadPoolExecutor | None = None
        self.stop = threading.Event()
        self.fetch_stops: dict[str, threading.Event] = {}
        self.log = logs.get()

    def event(self, component: str, verb: str) -> str:
        unpack = self.manifest.components[component].unpack
        return f"{'class' if unpack == 'class-tars' else 'tree'}.{verb}"

    # ---- start -------------------------------------------------------------------------------

    def submit(self, action: Action) -> cf.Future[Any]:
        assert self.procs is not None and self.threads is not None
        comp = self.manifest.components[action.component]
        if isinstance(action, Fetch):
            return self.threads.submit(self._fetch, comp)
        if isinstance(action, IndexArchive):
            _check_size(comp)
            return self.procs.submit(unpacking.index_archive, action.path, comp.unpack,
                                     md5=comp.md5 is not None)
        if isinstance(action, ExtractUnit | AdoptUnit):
            work = unpacking.extract_unit if isinstance(action, ExtractUnit) else unpacking.adopt_unit
            return self.procs.submit(work, action.origin, action.folder, action.partial, action.old,
                                     action.expected_bytes)
        if isinstance(action, VerifyUnit):
            records = self.journal.files(comp.name, action.unit)
            return self.procs.submit(verifying.verify_folder, action.folder, records)
        return _done_now(self._inline, action)

    def _archive_sha(self, component: str) -> str:
        row = self.journal.archive(component)
        assert row is not None
        return row.sha256

    def _inline(self, action: Action) -> None:
        if isinstance(action, MarkProcessed):
            # Not flushed: if power loss undoes it, W.tar is simply marked again.
            action.tar.rename(action.marked)
        elif isinstance(action, DeleteClassTar):
            # The folder is VERIFIED (flushed, journal durable) before this runs; if power
            # loss undoes the unlink, the tar is simply deleted again.
            action.tar.unlink()
        elif isinstance(action, DeleteArchive):
            action.path.unlink()

    def _fetch(self, comp: Component) -> Fetched:
        kind = comp.source.kind
        source = self.sources.get(kind)
        if source is None:
            raise PermanentError(f"components.{comp.name}: source {kind!r} is not available in this build")

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
        self.stop.set()
        for event in list(self.fetch_stops.values()):
            event.set()

    # ---- finish: returns True when the unit waits for the group commit -----------------------

    def complete(self, action: Action, result: Any) -> bool:
        comp = self.manifest.components[action.component]
        unit = action.key[1]
        if isinstance(action, Fetch):
            self._record_fetched(comp, result)
        elif isinstance(action, IndexArchive):
            self._record_index(comp, result)
        elif isinstance(action, ExtractUnit):
            self._record_unit(comp, unit, result, "replaced" if action.replace else "extracted")
        elif isinstance(action, AdoptUnit):
            adopted, extracted = result
            self._record_unit(comp, unit, extracted, "adopted" if adopted else "replaced")
        elif isinstance(action, VerifyUnit):
            return self._verified(comp, unit, result)
        elif isinstance(action, MarkProcessed):
            self.log.info("class.marked", component=comp.name, unit=unit, tar=str(action.marked))
        elif isinstance(action, DeleteClassTar):
            self.log.info("class.tar_deleted", component=comp.name, unit=unit, tar=str(action.tar))
        elif isinstance(action, DeleteArchive):
            self.journal.step(comp.name, "", action.kind, "ok")
            self.log.info("archive.deleted", component=comp.name, path=str(action.path))
            return False
        self.journal.step(comp.name, unit, action.kind, "ok")
        return False

    def _record_fetched(self, comp: Component, fetched: Fetched) -> None:
        st = fetched.path.stat()
        self.journal.record_archive(comp.name, ArchiveRow(
            str(fetched.path), st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev, fetched.sha256,
            fetched.md5, indexed=False), None)

    def _record_index(self, comp: Component, result: unpacking.IndexResult) -> None:
        _check_pins(comp, result)
        if comp.sha256 is None and comp.md5 is None:
            self.log.warning("archive.unpinned", component=comp.name, sha256=result.sha256,
                             hint=f'add sha256 = "{result.sha256}" to components.{comp.name}')
        self.journal.record_archive(comp.name, ArchiveRow(
            str(comp.archive), result.size, result.mtime_ns, result.ino, result.dev, result.sha256,
            result.md5, indexed=True), result.units)
        problems = [u for u in result.units if u.problem]
        self.log.info("archive.indexed", component=comp.name, path=str(comp.archive), bytes=result.size,
                      units=len(result.units), files=sum(u.files for u in result.units),
                      refused=len(problems))

    def _record_unit(self, comp: Component, unit: str, result: unpacking.Extracted, verb: str) -> None:
        assert comp.into is not None
        prefix = "" if unit == FLAT else f"{unit}/"
        list_name = comp.name if unit == FLAT else unit
        digest_file = self.manifest.state_dir / "sha256" / comp.name / f"{list_name}.sha256"
        # Not flushed here: the group commit's syncfs covers it before VERIFIED is recorded.
        write_text_fast(digest_file, verifying.digest_list(result.files, prefix))
        self.journal.record_extracted(comp.name, unit, self._archive_sha(comp.name), result.files)
        self.log.info(self.event(comp.name, verb), component=comp.name, unit=unit, files=len(result.files),
                      bytes=sum(f[1] for f in result.files))

    def _verified(self, comp: Component, unit: str, problems: list[str]) -> bool:
        if not problems:
            self.journal.step(comp.name, unit, "VerifyUnit", "ok")
            return True
        for line in problems[:20]:
            self.log.error("verify.mismatch", component=comp.name, unit=unit, problem=line)
        # Forget the record: the folder is now of unknown provenance, and the planner
        # adopts (compares) or re-extracts it from its tar. The tar was never deleted.
        self.journal.forget_unit(comp.name, unit)
        self.journal.step(comp.name, unit, "VerifyUnit", "mismatch", problems[0])
        raise TemporaryError(f"{problems[0]} (and {len(problems) - 1} more); re-extracting", delay=0.0)


def _check_size(comp: Component) -> None:
    size = comp.archive.stat().st_size
    if comp.size is not None and size != comp.size:
        raise PermanentError(f"{comp.archive}: size is {size} bytes, components.{comp.name}.size says "
                             f"{comp.size}; the file is incomplete or the manifest is wrong")


def _check_pins(comp: Component, result: unpacking.IndexResult) -> None:
    hint = f"the file is corrupt or components.{comp.name} pins another archive"
    if comp.size is not None and result.size != comp.size:
        raise PermanentError(f"{comp.archive}: size is {result.size}, expected {comp.size}; {hint}")
    if comp.sha256 is not None and result.sha256 != comp.sha256:
        raise DigestMismatch(str(comp.archive), "sha256", comp.sha256, result.sha256, hint)
    if comp.md5 is not None and result.md5 != comp.md5:
        raise DigestMismatch(str(comp.archive), "md5", comp.md5, str(result.md5), hint)


def classify(exc: BaseException, action: Action) -> DatasetdError:
    """The only place that turns an arbitrary failure into Permanent or Temporary."""
    if isinstance(exc, DatasetdError):
        return exc
    if isinstance(exc, OSError):
        where = exc.filename or action.component
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return PermanentError(f"{where}: no space left on its filesystem ({os.strerror(exc.errno)}); "
                                  "free space there and run again: verified data is kept")
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return PermanentError(f"{where}: {exc.strerror}; give datasetd write access or fix the path")
        return PermanentError(f"{where}: {exc.strerror or exc}")
    if isinstance(exc, cf.process.BrokenProcessPool):
        return PermanentError(f"components.{action.component}: a worker process died ({exc}); "
                              "check memory limits and the kernel log")
    return PermanentError(f"components.{action.component}: internal error in {action.kind}: {exc!r}")


def _done_now(fn: Any, action: Action) -> cf.Future[Any]:
    future: cf.Future[Any] = cf.Future()
    try:
        future.set_result(fn(action))
    except Exception as exc:  # noqa: BLE001 - delivered to the executor like any step's failure
        future.set_exception(exc)
    return future
