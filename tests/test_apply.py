"""End to end on real tar files: extraction, idempotence, adoption of the manual recipe's state, verify."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest

from conftest import (
    WNIDS,
    Dataset,
    gnu_tar_extract,
    gnu_tar_reference,
    journal_units,
    make_tar,
    sha256,
    tree_digest,
    write_manifest,
)


def class_tars(dataset: Dataset, dest: Path) -> list[Path]:
    """Split the outer tar by hand, the way the manual recipe does."""
    dest.mkdir(parents=True, exist_ok=True)
    gnu_tar_extract(dataset.train_tar, dest)
    return sorted(dest.glob("*.tar"))


def expected_train(dataset: Dataset, tmp_path: Path) -> dict[str, str]:
    return gnu_tar_reference(dataset.train_tar, tmp_path / "gnu")


def test_apply_extracts_byte_for_byte_what_gnu_tar_does(dataset: Dataset, tmp_path: Path) -> None:
    assert dataset.run("apply") == 0
    assert tree_digest(dataset.root / "train") == expected_train(dataset, tmp_path)
    assert tree_digest(dataset.root / "val") == tree_digest(gnu_tar_extract(dataset.val_tar, tmp_path / "v"))
    assert dataset.train_tar.exists()  # a file source's own path is never deleted
    status = dataset.status()
    assert status["state"] == "converged" and status["schema"] == 1
    train = status["components"]["train"]
    assert train["phase"] == "ready" and train["classes_done"] == train["classes_total"] == len(WNIDS)
    assert not list((dataset.root / "train").glob(".*"))  # no partial dirs left


def test_digest_lists_are_sha256sum_compatible(dataset: Dataset) -> None:
    import subprocess

    assert dataset.run("apply") == 0
    lists = sorted((dataset.root / ".datasetd/sha256/train").glob("*.sha256"))
    assert [p.stem for p in lists] == sorted(WNIDS)
    for lst in lists:
        subprocess.run(["sha256sum", "--quiet", "-c", str(lst)], cwd=dataset.root / "train", check=True)
    subprocess.run(["sha256sum", "--quiet", "-c", str(dataset.root / ".datasetd/sha256/val/val.sha256")],
                   cwd=dataset.root / "val", check=True)


def test_second_apply_is_a_no_op(dataset: Dataset, capsys: pytest.CaptureFixture[str]) -> None:
    assert dataset.run("apply") == 0
    steps = dataset.steps()
    assert sum(1 for s in steps if s[2] == "ExtractUnit") == len(WNIDS) + 1
    capsys.readouterr()
    mtimes = {p: p.stat().st_mtime_ns for p in (dataset.root / "train").rglob("*")}
    assert dataset.run("apply") == 0
    assert dataset.steps() == steps, "the second apply recorded work"
    events = [json.loads(line)["event"] for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    assert not {"class.extracted", "archive.indexed", "class.verified", "tree.extracted"} & set(events)
    assert "apply.converged" in events
    assert mtimes == {p: p.stat().st_mtime_ns for p in (dataset.root / "train").rglob("*")}


def test_manual_recipe_state_is_adopted_verified_and_cleaned(dataset: Dataset, tmp_path: Path) -> None:
    """Class tars split by hand, some untarred by the recipe's script and renamed Z_: all adopted."""
    train = dataset.root / "train"
    tars = class_tars(dataset, train)
    for t in tars[:3]:  # the hand script finished these ...
        gnu_tar_extract(t, train / t.stem)
        t.rename(train / f"Z_{t.name}")
    gnu_tar_extract(tars[3], train / tars[3].stem)  # ... extracted this one but died before renaming
    victim = next((train / tars[4].stem).glob("*")) if (train / tars[4].stem).exists() else None
    assert victim is None
    (train / tars[4].stem).mkdir()  # ... and left this one half-done
    (train / tars[4].stem / "half.JPEG").write_bytes(b"\xff\xd8")
    assert dataset.run("apply") == 0
    assert tree_digest(train) == expected_train(dataset, tmp_path)
    assert not list(train.glob("*.tar")), "verified class tars are deleted"
    kinds = [s[2] for s in dataset.steps()]
    assert kinds.count("AdoptUnit") == 5 and kinds.count("MarkProcessed") == len(WNIDS) - 3
    assert kinds.count("DeleteClassTar") == len(WNIDS)


def test_loose_tar_that_differs_from_the_index_is_refused_not_deleted(dataset: Dataset) -> None:
    train = dataset.root / "train"
    tars = class_tars(dataset, train)
    data = bytearray(tars[0].read_bytes())
    data[1024] ^= 0xFF  # a flipped byte inside the first member's data
    tars[0].write_bytes(bytes(data))
    assert dataset.run("apply") == 1
    assert tars[0].exists(), "a tar that failed its digest must never be deleted"
    status = dataset.status()["components"]["train"]
    assert status["phase"] == "error" and tars[0].name in status["last_error"]
    assert status["classes_done"] == len(WNIDS) - 1


def test_verify_finds_corruption_and_repair_fixes_it(dataset: Dataset, capsys: pytest.CaptureFixture[str]) -> None:
    assert dataset.run("apply") == 0
    victim = sorted((dataset.root / "train" / WNIDS[2]).glob("*.JPEG"))[1]
    good = victim.read_bytes()
    victim.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))  # same size: only a re-hash sees it
    gone = sorted((dataset.root / "val").glob("*.JPEG"))[0]
    gone.unlink()
    capsys.readouterr()
    assert dataset.run("verify") == 1
    out = capsys.readouterr().out
    assert str(victim) in out and f"{gone}: missing" in out
    assert dataset.run("verify", "--repair") == 0
    assert victim.read_bytes() == good and gone.exists()
    assert dataset.run("verify") == 0


def test_verify_of_one_component(dataset: Dataset) -> None:
    assert dataset.run("apply") == 0
    next((dataset.root / "val").glob("*.JPEG")).write_bytes(b"x")
    assert dataset.run("verify", "--component", "train") == 0
    assert dataset.run("verify", "--component", "val") == 1
    assert dataset.run("verify", "--component", "nope") == 2


def test_file_removed_behind_our_back_is_restored_by_apply(dataset: Dataset) -> None:
    assert dataset.run("apply") == 0
    victim = next((dataset.root / "train" / WNIDS[0]).glob("*.JPEG"))
    data = victim.read_bytes()
    victim.unlink()
    assert dataset.run("apply") == 0
    assert victim.read_bytes() == data


def test_wrong_archive_digest_fails_and_records_nothing(dataset: Dataset, tmp_path: Path) -> None:
    # The archive is hashed while its classes are extracted (archive.proved): folders may appear before
    # the verdict, but none is recorded, so none is ever trusted (test_prove_overlap has the rest).
    text = dataset.manifest.read_text().replace(sha256(dataset.train_bytes), "0" * 64)
    dataset.manifest.write_text(text)
    assert dataset.run("apply") == 1
    assert not journal_units(dataset.root, "verified", "train")
    assert not journal_units(dataset.root, "extracted", "train")
    assert (dataset.root / "sources" / "train.tar").read_bytes() == dataset.train_bytes
    err = dataset.status()["components"]["train"]["last_error"]
    assert "sha256" in err and "0" * 64 in err and sha256(dataset.train_bytes) in err


def test_compressed_flat_tar_and_unpinned_archive(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "root"
    root.mkdir()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in [("devkit/data/a.txt", b"alpha\n"), ("devkit/readme", b"r" * 5000)]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    (root / "devkit.tar.gz").write_bytes(buf.getvalue())
    m = write_manifest(tmp_path / "m.toml", root,
                       '[components.devkit]\nsource = "file"\npath = "devkit.tar.gz"\nunpack = "tar"\ninto = "dk"\n')
    from datasetd import cli

    assert cli.main(["--log-format", "json", "apply", str(m)]) == 0
    assert (root / "dk/devkit/data/a.txt").read_bytes() == b"alpha\n"
    err = capsys.readouterr().err
    assert "archive.unpinned" in err and sha256(buf.getvalue()) in err


def test_hostile_class_is_refused_and_the_others_converge(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    good = make_tar([("n01_1.JPEG", b"a" * 100)])
    evil = make_tar([("../../escape.JPEG", b"evil")])
    outer = make_tar([("n01.tar", good), ("n02.tar", evil)])
    (root / "t.tar").write_bytes(outer)
    m = write_manifest(tmp_path / "m.toml", root,
                       '[components.train]\nsource = "file"\npath = "t.tar"\nunpack = "class-tars"\ninto = "train"\n')
    from datasetd import cli

    assert cli.main(["apply", str(m)]) == 1
    assert (root / "train/n01/n01_1.JPEG").exists()
    assert not (root / "train/n02").exists()
    assert not list(tmp_path.rglob("escape.JPEG"))
    err = json.loads((root / ".datasetd/status.json").read_text())["components"]["train"]["last_error"]
    assert "../../escape.JPEG" in err


def test_symlink_member_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        link = tarfile.TarInfo("link")
        link.type, link.linkname = tarfile.SYMTYPE, str(tmp_path)
        tf.addfile(link)
        info = tarfile.TarInfo("link/owned")
        info.size = 4
        tf.addfile(info, io.BytesIO(b"evil"))
    (root / "v.tar").write_bytes(buf.getvalue())
    m = write_manifest(tmp_path / "m.toml", root,
                       '[components.val]\nsource = "file"\npath = "v.tar"\nunpack = "tar"\ninto = "val"\n')
    from datasetd import cli

    assert cli.main(["apply", str(m)]) == 1
    assert not (tmp_path / "owned").exists() and not (root / "val").exists()
    assert "'link'" in json.loads((root / ".datasetd/status.json").read_text())["components"]["val"]["last_error"]


def test_plan_reports_space_and_writes_nothing(dataset: Dataset, capsys: pytest.CaptureFixture[str]) -> None:
    before = sorted(p for p in dataset.root.rglob("*"))
    assert dataset.run("plan") == 0
    out = capsys.readouterr().out
    assert "IndexArchive" in out and "fits" in out
    assert sorted(p for p in dataset.root.rglob("*")) == before


def test_apply_refuses_work_that_cannot_fit(dataset: Dataset, capsys: pytest.CaptureFixture[str]) -> None:
    huge = 1 << 60
    text = dataset.manifest.read_text().replace(f"size = {len(dataset.train_bytes)}", f"size = {huge}")
    dataset.manifest.write_text(text)
    assert dataset.run("plan") == 1
    assert dataset.run("apply") == 1
    assert "needs" in capsys.readouterr().err
    assert not (dataset.root / "train").exists()


def test_status_without_a_daemon_is_computed_from_disk(dataset: Dataset, capsys: pytest.CaptureFixture[str]) -> None:
    assert dataset.run("status") == 1
    assert "pending" in capsys.readouterr().out
    assert dataset.run("apply") == 0
    capsys.readouterr()
    assert dataset.run("status", "--json") == 0
    snap = json.loads(capsys.readouterr().out)
    assert snap["components"]["train"]["phase"] == "ready" and snap["components"]["val"]["phase"] == "ready"


def test_second_apply_on_the_same_root_is_refused(dataset: Dataset) -> None:
    from datasetd.state.lock import RootLock

    with RootLock(dataset.root):
        assert dataset.run("apply") == 2


def test_lost_journal_is_rebuilt_by_proving_folders_not_by_trusting_them(dataset: Dataset) -> None:
    assert dataset.run("apply") == 0
    for p in (dataset.root / ".datasetd").glob("journal.sqlite*"):
        p.unlink()
    victim = sorted((dataset.root / "train" / WNIDS[5]).glob("*.JPEG"))[0]
    good = victim.read_bytes()
    victim.write_bytes(bytes([good[0] ^ 1]) + good[1:])  # same size: only a byte comparison sees it
    assert dataset.run("apply") == 0
    kinds = [s[2] for s in dataset.steps()]
    assert kinds.count("AdoptUnit") == len(WNIDS) + 1  # every class plus val, each compared with its tar
    replaced = [s for s in dataset.steps() if s[2] == "AdoptUnit"]
    assert len(replaced) == len(WNIDS) + 1
    assert victim.read_bytes() == good, "the folder that did not match its tar was replaced"


def test_pinned_archive_hashes_only_its_loose_class_tars(dataset: Dataset, tmp_path: Path) -> None:
    """One hash per byte: an in-place class tar of a pinned archive has no digest of its own (the
    archive's matched its pin); a class tar split out by hand is hashed so it can be compared."""
    train = dataset.root / "train"
    loose = class_tars(dataset, tmp_path / "split")[0]
    train.mkdir(parents=True)
    shutil.copy(loose, train / loose.name)
    assert dataset.run("apply") == 0
    with dataset.journal() as db:
        digests = dict(db.execute("SELECT unit, sha256 FROM unit_index WHERE component='train'"))
    assert digests.pop(loose.stem) == hashlib.sha256(loose.read_bytes()).hexdigest()
    assert set(digests.values()) == {""}, "in-place class tars were hashed at index time"
    assert tree_digest(train) == expected_train(dataset, tmp_path)
    assert not (train / loose.name).exists(), "the verified loose tar is deleted"


def test_in_place_units_are_read_back_while_extracted(dataset: Dataset, tmp_path: Path) -> None:
    """A class read in place is read back by the worker that wrote it (no second pass over the folder);
    a loose class tar still goes extract, Z_ marker, verify."""
    train = dataset.root / "train"
    loose = class_tars(dataset, tmp_path / "split")[0]
    train.mkdir(parents=True)
    shutil.copy(loose, train / loose.name)
    assert dataset.run("apply") == 0
    with dataset.journal() as db:
        verifies = dict(db.execute("SELECT unit, detail FROM step WHERE component='train' AND "
                                   "action='VerifyUnit' AND outcome='ok'"))
    assert verifies.pop(loose.stem) == ""
    assert set(verifies) == set(WNIDS) - {loose.stem}
    assert set(verifies.values()) == {"read back while extracted"}
    assert journal_units(dataset.root, "verified", "train") == set(WNIDS)
    assert tree_digest(train) == expected_train(dataset, tmp_path)
