"""Renames and deletes: a class tar marked processed (inline, one rename), and the deletes of class
tars and archives, each after its worker re-proves every folder that depends on it.

Rows of engine.steps.STEPS. A refused delete keeps the tar or archive and forgets the records of
the folders that no longer match, so the planner repairs them from it first.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from datasetd.archive import verify
from datasetd.core.model import DeleteArchive, DeleteClassTar, MarkProcessed
from datasetd.core.planning import unit_paths
from datasetd.engine.hands import Hands, Work
from datasetd.errors import TemporaryError


def mark(action: MarkProcessed) -> None:
    # Not flushed: if power loss undoes it, W.tar is simply marked again.
    action.tar.rename(action.marked)


def delete_class_tar_work(hands: Hands, action: DeleteClassTar) -> Work:
    # The folder is VERIFIED (flushed, journal durable) before this runs, and is re-proved in the worker.
    folder = unit_paths(hands.component(action), action.unit).folder
    return verify.reprove_then_unlink, (action.tar, [_dependent(hands, action.component, action.unit, folder)])


def delete_archive_work(hands: Hands, action: DeleteArchive) -> Work:
    # Every unit is VERIFIED and durable; each one is re-proved in the worker before the unlink.
    comp = hands.component(action)
    units = [_dependent(hands, comp.name, unit, unit_paths(comp, unit).folder)
             for unit in sorted(hands.journal.units(comp.name))]
    return verify.reprove_then_unlink, (action.path, units)


def _dependent(hands: Hands, component: str, unit: str, folder: Path) -> verify.Dependent:
    return unit, folder, hands.journal.files(component, unit), hands.journal.file_stats(component, unit)


def deleted(logged: Callable[[Hands, Any, Any], bool]) -> Callable[[Hands, Any, Any], bool]:
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
