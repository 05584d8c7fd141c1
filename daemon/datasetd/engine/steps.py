"""How each action type runs and how its result is recorded: one table, `STEPS`, the executor's hands.

The planner decides *what* (core/model.py says each Action type's phase and
where it runs); this table says *how*: `work` turns the action into a callable
and its arguments for that place (a worker process, a fetch thread, or the
executor inline), `record` writes the outcome to journal, digest lists and log.
The step functions live by what they act on: engine.archivesteps (fetch, index,
prove), engine.unitsteps (extract, adopt, verify, arrange), engine.deletesteps
(mark, delete); all act through engine.hands.Hands. Adding an action kind means
one model class and one row here; a test checks the table covers every concrete
Action type.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from datasetd.core.model import (
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
    VerifyUnit,
)
from datasetd.engine.archivesteps import (
    fetch_record,
    fetch_work,
    index_record,
    index_work,
    prove_record,
    prove_work,
)
from datasetd.engine.deletesteps import delete_archive_work, delete_class_tar_work, deleted, mark
from datasetd.engine.hands import Hands, Work
from datasetd.engine.unitsteps import (
    adopt_record,
    adopt_work,
    arrange_record,
    arrange_work,
    extract_record,
    extract_work,
    verify_record,
    verify_work,
)

A = TypeVar("A", bound=Action)


@dataclass(frozen=True)
class Step(Generic[A]):
    """`work` says what to call where the action type runs; `record` returns True when the unit is
    verified and waits for the group commit."""

    work: Callable[[Hands, A], Work]
    record: Callable[[Hands, A, Any], bool]


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
    Fetch: Step(fetch_work, fetch_record),
    IndexArchive: Step(index_work, index_record),
    ProveArchive: Step(prove_work, prove_record),
    ExtractUnit: Step(extract_work, extract_record),
    AdoptUnit: Step(adopt_work, adopt_record),
    VerifyUnit: Step(verify_work, verify_record),
    ArrangeByClass: Step(arrange_work, arrange_record),
    MarkProcessed: Step(_inline(mark), _logged("class.marked", tar=lambda a: a.marked)),
    DeleteClassTar: Step(delete_class_tar_work, deleted(_logged("class.tar_deleted", tar=lambda a: a.tar))),
    DeleteArchive: Step(delete_archive_work, deleted(_logged("archive.deleted", path=lambda a: a.path))),
}
