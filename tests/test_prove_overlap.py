"""One read of a pinned archive: its index is its headers, its digest is checked while units are extracted.

The invariants stay: nothing is recorded verified, and nothing is deleted, before the archive's
digest matched its pin; a bad archive leaves the tree as it was; fixed, it converges byte for byte.
"""

from __future__ import annotations

import io
import os
import shutil
import sqlite3
import tarfile
from pathlib import Path

import pytest

from conftest import (
    WNIDS,
    Dataset,
    gnu_tar_extract,
    gnu_tar_reference,
    journal_units,
    sha256,
    tree_digest,
    write_manifest,
)
from datasetd import cli
from datasetd.config.parsing import load
from datasetd.core.model import (
    UNPROVEN,
    Action,
    AdoptUnit,
    ArchiveState,
    ComponentState,
    ExtractUnit,
    IndexArchive,
    Journal,
    Observed,
    ProveArchive,
    UnitIndex,
    UnitState,
)
from datasetd.core.planning import plan
from datasetd.demo import tar_bytes
from datasetd.engine.executor import Executor
from datasetd.engine.steps import STEPS
from datasetd.errors import CorruptArchive
from datasetd.state.journal import JournalDB
from datasetd.state.observe import observe
from datasetd.state.status import StatusBoard
from test_planner import manifest


def last_member_data(outer: bytes) -> int:
    """Offset in `outer` of the last file's bytes inside the last class tar: corrupting them breaks
    the archive's digest alone (every header and end-of-archive marker stays well formed)."""
    with tarfile.open(fileobj=io.BytesIO(outer), mode="r:") as tf:
        last_class = tf.getmembers()[-1]
    inner_bytes = outer[last_class.offset_data:last_class.offset_data + last_class.size]
    with tarfile.open(fileobj=io.BytesIO(inner_bytes), mode="r:") as inner:
        last_file = [m for m in inner.getmembers() if m.isreg()][-1]
    return last_class.offset_data + last_file.offset_data + last_file.size - 16


def train_only(dataset: Dataset) -> None:
    text = dataset.manifest.read_text()
    dataset.manifest.write_text(text[:text.index("[components.val]")])


def steps(dataset: Dataset, action: str) -> list[tuple[str, str]]:
    with sqlite3.connect(dataset.root / ".datasetd" / "journal.sqlite") as db:
        return list(db.execute("SELECT outcome, detail FROM step WHERE action=? ORDER BY id", (action,)))


def test_corrupt_last_bytes_fail_on_the_pin_record_and_delete_nothing_then_converge(
        dataset: Dataset, tmp_path: Path) -> None:
    train_only(dataset)
    good = dataset.train_bytes
    cut = last_member_data(good)
    bad = good[:cut] + bytes(b ^ 0xFF for b in good[cut:cut + 16]) + good[cut + 16:]
    dataset.train_tar.write_bytes(bad)
    # a class tar split by hand sits in `into`: a bad archive must not delete it
    split = gnu_tar_extract(dataset.train_tar, tmp_path / "split")
    into = dataset.root / "train"
    into.mkdir()
    loose = shutil.copy(split / f"{WNIDS[0]}.tar", into)

    assert dataset.run("apply") == 1
    error = dataset.status()["components"]["train"]["last_error"]
    assert str(dataset.train_tar) in error and "sha256" in error and sha256(good) in error, error
    assert not journal_units(dataset.root, "verified", "train")
    assert not journal_units(dataset.root, "extracted", "train")
    assert dataset.train_tar.read_bytes() == bad, "the archive itself is never touched"
    assert Path(loose).read_bytes() == (split / f"{WNIDS[0]}.tar").read_bytes(), "the loose class tar was kept"
    assert sorted(p.name for p in into.iterdir()) == [f"{WNIDS[0]}.tar"], "folders of the bad archive stayed"
    assert [o for o, _ in steps(dataset, "ProveArchive")] == ["failed"]
    assert not [s for s in dataset.steps() if s[2] in ("DeleteClassTar", "DeleteArchive", "Commit")]

    dataset.train_tar.write_bytes(good)  # fixed: a new file, so it is indexed and hashed again
    assert dataset.run("apply") == 0
    assert tree_digest(into) == gnu_tar_reference(dataset.train_tar, tmp_path / "gnu")
    assert journal_units(dataset.root, "verified", "train") == set(WNIDS)


def test_extraction_starts_before_the_pin_hash_has_finished(dataset: Dataset) -> None:
    """The executor's own record of the verdict says how many unit steps had begun before it; the
    old flow (hash, then list, then extract) could only ever say none."""
    train_only(dataset)
    assert dataset.run("apply") == 0
    (outcome, detail), = steps(dataset, "ProveArchive")
    assert outcome == "ok"
    started = int(detail.split()[0])
    assert started >= 1, detail
    order = [s[2] for s in dataset.steps() if s[0] == "train"]
    assert order.index("IndexArchive") < order.index("ProveArchive") < order.index("Commit")
    with sqlite3.connect(dataset.root / ".datasetd" / "journal.sqlite") as db:
        keys = {r[0] for r in db.execute("SELECT archive_sha256 FROM unit UNION SELECT archive_sha256 FROM unit_index")}
        assert not any(k.startswith(UNPROVEN) for k in keys), keys  # all re-keyed by the real digest


def test_while_the_digest_is_checked_only_fresh_in_place_extractions_start() -> None:
    """Pure planner: with the index in and the verdict not, a unit with no folder is extracted; one
    with a folder of unknown provenance (adoption may replace it) or a loose tar waits."""
    m = manifest()
    idx = {n: UnitIndex(n, offset=512, size=10240, sha256="", files=3, dirs=0, bytes=9000) for n in ("a", "b", "c")}
    units = (UnitState(index=idx["a"]),
             UnitState(index=idx["b"], folder=True),
             UnitState(index=UnitIndex("c", 512, 10240, "d" * 64, 3, 0, 9000), loose_tar="c.tar", loose_tar_ok=True))
    pending = ArchiveState(present=True, size=100, verified=True, indexed=True, proven=False)
    actions = plan(m, Observed({"train": ComponentState(archive=pending, units=units,
                                                        archive_sha256=f"{UNPROVEN}x", inodes_free=10**9)}))
    assert [type(a) for a in actions] == [ProveArchive, ExtractUnit], actions
    extract = actions[1]
    assert isinstance(extract, ExtractUnit) and extract.unit == "a" and not extract.origin.loose
    proven = ArchiveState(present=True, size=100, verified=True, indexed=True)
    after = plan(m, Observed({"train": ComponentState(archive=proven, units=units, archive_sha256="a" * 64)}))
    assert {type(a) for a in after} == {ExtractUnit, AdoptUnit}, after


def test_while_the_digest_is_checked_units_start_only_as_far_as_free_inodes_surely_last() -> None:
    """Pure planner: members are not counted yet, so a class tar of n bytes may need n // 512 inodes
    (a header each) plus its folder; units start in order while those bounds, summed over every unit
    not yet extracted, fit in the inodes free now. An extracted unit's inodes are already taken."""
    m = manifest()
    idx = [UnitIndex(f"n{i}", offset=512 * (1 + 101 * i), size=512 * 100, sha256="", files=0, dirs=0,
                     bytes=512 * 100) for i in range(5)]
    pending = ArchiveState(present=True, size=100, verified=True, indexed=True, proven=False)

    def started(units: tuple[UnitState, ...], free: int | None) -> list[str]:
        actions = plan(m, Observed({"train": ComponentState(archive=pending, units=units,
                                                            archive_sha256=f"{UNPROVEN}x", inodes_free=free)}))
        assert isinstance(actions[0], ProveArchive)
        return [a.unit for a in actions[1:] if isinstance(a, ExtractUnit)]

    fresh = tuple(UnitState(index=i) for i in idx)
    assert started(fresh, 3 * 101) == ["n0", "n1", "n2"]
    assert started(fresh, 3 * 101 - 1) == ["n0", "n1"]
    assert started(fresh, None) == []  # not looked up: nothing may start before the count
    one_done = (UnitState(index=idx[0], folder=True, journal=Journal.EXTRACTED), *fresh[1:])
    assert started(one_done, 3 * 101) == ["n1", "n2", "n3"]


def test_no_unit_is_committed_verified_before_the_verdict(dataset: Dataset) -> None:
    """Both gates, deterministically: the real steps index the archive from its headers and extract a
    unit from it; the executor's group commit and the journal itself then refuse to mark that unit
    verified until ProveArchive's verdict is in. (In a whole apply the hash of a small test archive
    wins every race, so only this order of the real steps shows the gates.)"""
    train_only(dataset)
    m = load(dataset.manifest)
    journal = JournalDB(m.state_dir)
    ex = Executor(m, journal, StatusBoard(m), workers=1)
    ex.observed = dict(observe(m, journal).components)

    def step(action: Action) -> object:
        fn, args = STEPS[type(action)].work(ex.hands, action)
        return STEPS[type(action)].record(ex.hands, action, fn(*args))

    (index,) = plan(m, Observed(ex.observed))
    assert isinstance(index, IndexArchive)
    step(index)
    ex.observed = dict(observe(m, journal).components)
    actions = plan(m, Observed(ex.observed))
    assert isinstance(actions[0], ProveArchive) and len(actions) == 1 + len(WNIDS)
    extract = actions[1]
    assert isinstance(extract, ExtractUnit) and step(extract) is True  # read back: waits for the commit
    ex._set(extract.key, verified_at=0.0)
    ex._refresh(extract)
    ex._commit(force=True)
    assert not journal_units(dataset.root, "verified", "train"), "committed before the verdict"
    journal.mark_verified("train", [extract.unit])
    assert not journal_units(dataset.root, "verified", "train"), "the journal took an unproven unit"
    assert journal_units(dataset.root, "extracted", "train") == {extract.unit}

    step(actions[0])  # the verdict: the digest matches the pin
    ex._refresh(actions[0])
    ex._commit(force=True)
    assert journal_units(dataset.root, "verified", "train") == {extract.unit}


def test_with_expect_or_classes_nothing_starts_before_the_full_index() -> None:
    """`expect` and `classes` refuse from the member counts: while only the outer headers are indexed
    (a manifest edited meanwhile), the full pass runs first and nothing else."""
    idx = UnitIndex("n01440764", offset=512, size=10240, sha256="", files=0, dirs=0, bytes=10240)
    pending = ArchiveState(present=True, size=100, verified=True, indexed=True, proven=False)
    for extra in ('expect = { files = 3 }', 'classes = ["n01440764"]'):
        actions = plan(manifest(train=extra), Observed({"train": ComponentState(
            archive=pending, units=(UnitState(index=idx),), archive_sha256=f"{UNPROVEN}x")}))
        assert [type(a) for a in actions] == [ProveArchive], (extra, actions)


def test_an_archive_changed_before_its_full_pass_is_refused_like_a_broken_pin(dataset: Dataset) -> None:
    """The real steps in order: outer headers indexed, one class extracted, then the file changes
    (a new mtime) before the full pass reads it: the pass refuses it, the class is forgotten and its
    folder removed, and the archive is indexed afresh next time."""
    train_only(dataset)
    m = load(dataset.manifest)
    journal = JournalDB(m.state_dir)
    ex = Executor(m, journal, StatusBoard(m), workers=1)

    def step(action: Action) -> object:
        fn, args = STEPS[type(action)].work(ex.hands, action)
        return STEPS[type(action)].record(ex.hands, action, fn(*args))

    step(plan(m, observe(m, journal))[0])
    prove, extract = plan(m, observe(m, journal))[:2]
    assert isinstance(prove, ProveArchive) and isinstance(extract, ExtractUnit)
    step(extract)
    assert extract.folder.is_dir() and journal_units(dataset.root, "extracted", "train") == {extract.unit}
    st = dataset.train_tar.stat()
    os.utime(dataset.train_tar, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    with pytest.raises(CorruptArchive, match="changed since it was indexed"):
        step(prove)
    assert not extract.folder.exists() and not journal_units(dataset.root, "extracted", "train")
    assert journal.archive("train") is None


def test_a_class_the_full_pass_refuses_is_never_recorded_whenever_its_extraction_ends(tmp_path: Path) -> None:
    """A class tar with bytes after its end-of-archive marker passes its own extraction (the members are
    fine) but not the full index pass: before or after the verdict, it is not recorded and its folder
    goes; the others are verified."""
    good = [(f"{w}.tar", tar_bytes([(f"{w}/{w}_{i}.JPEG", bytes([i]) * 700) for i in range(4)])) for w in WNIDS[:3]]
    bad_name, bad_tar = good[1]
    junk = bad_tar + b"junk" + b"\0" * 508  # not zeros after the end marker
    outer = tar_bytes([good[0], (bad_name, junk), good[2]])
    root = tmp_path / "root"
    (root / "sources").mkdir(parents=True)
    (root / "sources" / "train.tar").write_bytes(outer)
    m = write_manifest(tmp_path / "m.toml", root, f"""
[components.train]
source = "file"
path = "sources/train.tar"
sha256 = "{sha256(outer)}"
unpack = "class-tars"
into = "train"
""")
    assert cli.main(["--log-format", "json", "apply", str(m)]) == 1
    assert journal_units(root, "verified", "train") == {WNIDS[0], WNIDS[2]}
    assert not journal_units(root, "extracted", "train")
    assert not (root / "train" / WNIDS[1]).exists()
