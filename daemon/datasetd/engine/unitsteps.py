"""The steps of one unit: extract, adopt or verify a class folder (or a flat tree), and arrange val by class.

Rows of engine.steps.STEPS. Each records the unit's files in the journal and its digest list; a
unit read back while it was written is verified, and waits only for the group commit.
"""

from __future__ import annotations

from datasetd.archive import arrange, extract, verify
from datasetd.core.model import FLAT, AdoptUnit, ArrangeByClass, ExtractUnit, VerifyUnit, unproven
from datasetd.engine import digestlists
from datasetd.engine.archivesteps import remove_unproven
from datasetd.engine.hands import Hands, Work
from datasetd.errors import TemporaryError
from datasetd.state.durable import write_text_atomic, write_text_fast


# Both return the fingerprint of the files read back (state/filestats.py) beside the result.
def extract_work(hands: Hands, action: ExtractUnit) -> Work:
    return verify.extract_fingerprinted, (action.origin, action.folder, action.partial, action.old,
                                      action.expected_bytes)


def adopt_work(hands: Hands, action: AdoptUnit) -> Work:
    return verify.adopt_fingerprinted, (action.origin, action.folder, action.partial, action.old,
                                    action.expected_bytes)


def extract_record(hands: Hands, action: ExtractUnit, result: tuple[extract.Extracted, verify.Taken]) -> bool:
    extracted, taken = result
    problem = _refused_meanwhile(hands, action)
    if problem is not None:
        # Started before the full index pass, which then refused this class: never recorded.
        remove_unproven(hands, hands.component(action), action.unit)
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


def adopt_record(hands: Hands, action: AdoptUnit,
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


def verify_work(hands: Hands, action: VerifyUnit) -> Work:
    return verify.prove_folder, (action.folder, hands.journal.files(action.component, action.unit))


def verify_record(hands: Hands, action: VerifyUnit, result: tuple[list[str], bytes | None]) -> bool:
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


def arrange_work(hands: Hands, action: ArrangeByClass) -> Work:
    comp = hands.component(action)
    spec = comp.arrange
    assert spec is not None  # the planner arranges only components that ask for it
    kit = hands.manifest.components[spec.devkit].into if spec.devkit is not None else None
    sources = arrange.LabelSources(devkit_tree=kit, csv=spec.csv, cross_check=spec.cross_check)
    return arrange.arrange_by_class, (comp.name, action.folder, action.plan_file,
                                      hands.journal.files(comp.name, action.unit), sources, comp.expect)


def arrange_record(hands: Hands, action: ArrangeByClass, result: arrange.Arranged) -> bool:
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
