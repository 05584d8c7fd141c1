"""The planner is pure: (manifest, observed) -> actions. One test per row of the class-tar protocol."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from datasetd.config.parsing import parse
from datasetd.core.costs import space_needs, traffic
from datasetd.core.model import (
    FLAT,
    AdoptUnit,
    ArchiveState,
    Blocked,
    ComponentState,
    DeleteArchive,
    DeleteClassTar,
    ExtractUnit,
    Fetch,
    IndexArchive,
    Journal,
    MarkProcessed,
    Observed,
    UnitIndex,
    UnitState,
    VerifyUnit,
)
from datasetd.core.planning import is_ready, plan, unit_paths
from planner_cases import ROOT, SHA, manifest


def unit(name: str = "n01", **kw: object) -> UnitState:
    idx = UnitIndex(name, offset=512, size=10240, sha256="b" * 64, files=3, dirs=0, bytes=9000)
    return UnitState(index=idx, **kw)  # type: ignore[arg-type]


VERIFIED_ARCHIVE = ArchiveState(present=True, size=100, verified=True, indexed=True)
DONE = {"folder": True, "intact": True, "journal": Journal.VERIFIED}


def observed(*units: UnitState, archive: ArchiveState = VERIFIED_ARCHIVE, name: str = "train") -> Observed:
    return Observed({name: ComponentState(archive=archive, units=units, archive_sha256=SHA)})


def only(actions: list) -> object:  # type: ignore[type-arg]
    assert len(actions) == 1, actions
    return actions[0]


def test_unindexed_present_archive_is_indexed_first() -> None:
    m = manifest()
    a = only(plan(m, observed(archive=ArchiveState(present=True, size=100))))
    assert isinstance(a, IndexArchive) and a.path == Path("/mnt/nas/train.tar")


def test_missing_file_source_is_blocked_with_the_key_to_fix() -> None:
    a = only(plan(manifest(), observed(archive=ArchiveState(present=False))))
    assert isinstance(a, Blocked)
    assert "components.train.path" in a.reason and "/mnt/nas/train.tar" in a.reason


def test_missing_download_is_fetched() -> None:
    m = parse(f"""
version = 1
root = "{ROOT}"
[components.dev]
source = "http"
url = "https://example.org/devkit.tar.gz"
file = "downloads/devkit.tar.gz"
unpack = "none"
""".encode(), Path("/m.toml"))
    a = only(plan(m, observed(archive=ArchiveState(present=False), name="dev")))
    assert isinstance(a, Fetch) and a.component == "dev"


def test_unverified_download_on_disk_goes_back_to_its_source() -> None:
    """A torrent writes in place: a present, unrecorded download may be partial; its source resumes it."""
    m = parse(f"""
version = 1
root = "{ROOT}"
[components.val]
source = "torrent"
torrent = "5d6d0df7ed81efd49ca99ea4737e0ae5e3a5f2e5"
file = "ILSVRC2012_img_val.tar"
unpack = "tar"
into = "val"
""".encode(), Path("/m.toml"))
    a = only(plan(m, observed(archive=ArchiveState(present=True, size=10), name="val")))
    assert isinstance(a, Fetch)
    fetched = ArchiveState(present=True, size=10, verified=True, indexed=False)
    assert isinstance(only(plan(m, observed(archive=fetched, name="val"))), IndexArchive)


def test_nothing_on_disk_extracts_in_place_from_the_archive() -> None:
    a = only(plan(manifest(), observed(unit())))
    assert isinstance(a, ExtractUnit)
    assert not a.origin.loose and a.origin.path == Path("/mnt/nas/train.tar") and a.origin.offset == 512
    assert a.folder == ROOT / "train/n01" and a.partial == ROOT / "train/.n01.partial"
    assert a.old == ROOT / "train/.n01.old" and a.expected_bytes == 9000
    assert a.replace is False


def test_a_leftover_partial_is_extracted_again() -> None:
    a = only(plan(manifest(), observed(unit())))
    assert isinstance(a, ExtractUnit)


def test_loose_class_tar_is_preferred_over_the_archive() -> None:
    a = only(plan(manifest(), observed(unit(loose_tar="n01.tar", loose_tar_ok=True))))
    assert isinstance(a, ExtractUnit) and a.origin.loose and a.origin.path == ROOT / "train/n01.tar"
    assert a.origin.sha256 == "b" * 64  # checked against the index while extracting


def test_loose_tar_the_index_did_not_hash_is_never_used_nor_deleted() -> None:
    """A pinned archive's index hashes only the class tars found loose at the time; one split later
    has no digest to be compared with, so the unit is read in place and the loose tar left alone."""
    u = replace(unit(loose_tar="n01.tar", loose_tar_ok=True), index=replace(unit().index, sha256=""))
    a = only(plan(manifest(), observed(u)))
    assert isinstance(a, ExtractUnit) and not a.origin.loose and a.origin.sha256 == ""
    done = replace(u, **DONE)  # type: ignore[arg-type]
    assert plan(manifest(), observed(done)) == []


def test_loose_tar_of_wrong_size_is_never_used_nor_deleted() -> None:
    u = unit(loose_tar="n01.tar", loose_tar_ok=False)
    a = only(plan(manifest(), observed(u)))
    assert isinstance(a, ExtractUnit) and not a.origin.loose
    done = replace(u, **DONE)  # type: ignore[arg-type]
    assert plan(manifest(), observed(done)) == []


def test_folder_without_record_is_adopted_by_comparison() -> None:
    a = only(plan(manifest(), observed(unit(folder=True, loose_tar="Z_n01.tar", loose_tar_ok=True))))
    assert isinstance(a, AdoptUnit) and a.origin.path == ROOT / "train/Z_n01.tar"


def test_recorded_folder_marks_its_tar_before_verifying() -> None:
    u = unit(folder=True, intact=True, journal=Journal.EXTRACTED, loose_tar="n01.tar", loose_tar_ok=True)
    a = only(plan(manifest(), observed(u)))
    assert isinstance(a, MarkProcessed)
    assert (a.tar, a.marked) == (ROOT / "train/n01.tar", ROOT / "train/Z_n01.tar")


def test_recorded_folder_with_marked_tar_is_verified() -> None:
    u = unit(folder=True, intact=True, journal=Journal.EXTRACTED, loose_tar="Z_n01.tar", loose_tar_ok=True)
    a = only(plan(manifest(), observed(u)))
    assert isinstance(a, VerifyUnit) and a.folder == ROOT / "train/n01"


def test_recorded_folder_read_in_place_is_verified() -> None:
    a = only(plan(manifest(), observed(unit(folder=True, intact=True, journal=Journal.EXTRACTED))))
    assert isinstance(a, VerifyUnit)


def test_verified_folder_deletes_its_tar_only_then() -> None:
    u = unit(**DONE, loose_tar="Z_n01.tar", loose_tar_ok=True)  # type: ignore[arg-type]
    a = only(plan(manifest(), observed(u)))
    assert isinstance(a, DeleteClassTar) and a.tar == ROOT / "train/Z_n01.tar"
    for state in (Journal.NONE, Journal.EXTRACTED):
        acts = plan(manifest(), observed(replace(u, journal=state)))
        assert not any(isinstance(x, DeleteClassTar) for x in acts)


def test_verified_folder_that_lost_files_is_extracted_again_in_place() -> None:
    u = unit(folder=True, intact=False, journal=Journal.VERIFIED)
    a = only(plan(manifest(), observed(u)))
    assert isinstance(a, ExtractUnit) and a.replace is True


def test_converged_unit_plans_nothing_and_component_is_ready() -> None:
    m = manifest()
    obs = observed(unit(**DONE))  # type: ignore[arg-type]
    assert plan(m, obs) == []
    assert is_ready(m.components["train"], obs.components["train"])


def test_converged_unit_needs_no_archive() -> None:
    m = manifest()
    obs = observed(unit(**DONE), archive=ArchiveState(present=False, indexed=True))  # type: ignore[arg-type]
    assert plan(m, obs) == []


def test_unit_needing_bytes_without_archive_asks_for_it() -> None:
    obs = observed(unit(), archive=ArchiveState(present=False, indexed=True))
    a = only(plan(manifest(), obs))
    assert isinstance(a, Blocked) and "not found" in a.reason


def test_hostile_unit_is_blocked_alone() -> None:
    bad = replace(unit("n02"), index=replace(unit("n02").index, problem="member '../x' refused"))
    acts = plan(manifest(), observed(unit("n01"), bad))
    assert {type(a) for a in acts} == {ExtractUnit, Blocked}
    blocked = next(a for a in acts if isinstance(a, Blocked))
    assert blocked.unit == "n02" and "../x" in blocked.reason


def test_downloaded_archive_is_deleted_after_everything_is_verified_when_not_kept() -> None:
    m = parse(f"""
version = 1
root = "{ROOT}"
[components.val]
source = "http"
url = "https://example.org/val.tar"
file = "downloads/val.tar"
unpack = "tar"
into = "val"
keep_archive = false
""".encode(), Path("/m.toml"))
    flat = UnitState(index=UnitIndex(FLAT, 0, 100, "", 1, 0, 50), **DONE)  # type: ignore[arg-type]
    a = only(plan(m, observed(flat, name="val")))
    assert isinstance(a, DeleteArchive) and a.path == ROOT / "downloads/val.tar"
    pending = replace(flat, journal=Journal.EXTRACTED)
    assert not any(isinstance(x, DeleteArchive) for x in plan(m, observed(pending, name="val")))


def test_file_source_archive_is_never_deleted() -> None:
    m = manifest(train="keep_archive = false")
    assert plan(m, observed(unit(**DONE))) == []  # type: ignore[arg-type]


def test_flat_unit_paths_sit_beside_into() -> None:
    m = parse(f'version = 1\nroot = "{ROOT}"\n[components.val]\nsource = "file"\npath = "v.tar"\n'
              f'unpack = "tar"\ninto = "imagenet/val"\n'.encode(), Path("/m.toml"))
    p = unit_paths(m.components["val"], FLAT)
    assert p.folder == ROOT / "imagenet/val" and p.partial == ROOT / "imagenet/.val.partial"


def test_dependent_waits_until_its_dependency_is_ready() -> None:
    m = manifest(extra="""
[components.devkit]
source = "file"
path = "/mnt/nas/devkit.tar"
unpack = "tar"
into = "devkit"
after = ["train"]
""")
    dev = ComponentState(archive=ArchiveState(present=True, size=10))
    obs = Observed({"train": observed(unit()).components["train"], "devkit": dev})
    assert {a.component for a in plan(m, obs)} == {"train"}
    obs.components["train"] = observed(unit(**DONE)).components["train"]  # type: ignore[arg-type]
    assert {a.component for a in plan(m, obs)} == {"devkit"}


def test_disabled_component_plans_nothing() -> None:
    m = manifest(train="enabled = false")
    assert plan(m, observed(unit())) == []


def test_unpack_none_is_ready_once_verified() -> None:
    m = parse(f'version = 1\nroot = "{ROOT}"\n[components.x]\nsource = "file"\npath = "x.bin"\n'.encode(),
              Path("/m.toml"))
    assert isinstance(only(plan(m, observed(archive=ArchiveState(True, 5), name="x"))), IndexArchive)
    assert plan(m, observed(archive=ArchiveState(True, 5, verified=True), name="x")) == []


def test_space_needs_count_only_missing_units_and_all_their_inodes() -> None:
    m = manifest()
    obs = observed(unit("n01", **DONE), unit("n02"), unit("n03"))  # type: ignore[arg-type]
    (need,) = space_needs(m, obs)
    assert need.path == ROOT / "train"
    assert need.inodes == 2 * (3 + 1)
    assert need.bytes >= 2 * 9000


def test_space_needs_before_indexing_use_the_archive_size_as_bound() -> None:
    m = manifest(train="size = 123456789")
    (need,) = space_needs(m, observed(archive=ArchiveState(present=True, size=123456789)))
    assert need.bytes >= 123456789 and not need.inodes_known


@pytest.mark.parametrize("n", [1, 5])
def test_traffic_adds_up_reads_and_writes(n: int) -> None:
    m = manifest()
    obs = observed(*(unit(f"n{i:02d}") for i in range(n)))
    t = traffic(plan(m, obs), m, obs)
    assert (t.read, t.write) == (n * 10240, n * 9000)
