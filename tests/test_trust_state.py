"""Damaged state is a clear error or a rebuild, never a traceback; one lock that survives its directory.

Real SQLite files damaged on purpose (random bytes, cut in half, every page overwritten, only the
file table's pages: met mid-run, or by verify's full check), hand-edited
status.json files, and a real `datasetd run` whose `.datasetd/` is deleted under it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import WNIDS, Dataset, datasetd_cmd, gnu_tar_reference, run_datasetd, tree_digest
from datasetd.state import journal as journal_mod

JOURNAL = Path(".datasetd/journal.sqlite")


def _random_bytes(path: Path) -> None:
    path.write_bytes(os.urandom(path.stat().st_size))


def _cut_in_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _page_overwritten(path: Path) -> None:
    """The header stays valid, so SQLite opens it; only an integrity check sees the damage."""
    data = bytearray(path.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    for n in range(1, len(data) // page):
        data[n * page + 8: (n + 1) * page] = os.urandom(page - 8)
    path.write_bytes(bytes(data))


def _file_table_overwritten(path: Path) -> None:
    """Only the pages holding file rows (member names end in .JPEG): the open check does not read
    them (a no-op never does), so the damage is met mid-run, by the first read of a unit's files."""
    data = bytearray(path.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    hit = [n for n in range(1, len(data) // page) if b".JPEG" in data[n * page: (n + 1) * page]]
    assert hit, "the journal holds no file rows"
    for n in hit:
        data[n * page + 8: (n + 1) * page] = os.urandom(page - 8)
    path.write_bytes(bytes(data))


def _checkpointed(dataset: Dataset) -> Path:
    """The journal with everything in the main file (no -wal), as a cleanly stopped run leaves it."""
    with dataset.journal() as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    return dataset.root / JOURNAL


@pytest.mark.parametrize("damage", [_random_bytes, _cut_in_half, _page_overwritten],
                         ids=["random-bytes", "cut-in-half", "page-overwritten"])
def test_a_damaged_journal_is_moved_aside_and_rebuilt_by_every_verb(
        dataset: Dataset, tmp_path: Path, damage: Callable[[Path], None]) -> None:
    assert dataset.run("apply") == 0
    damage(_checkpointed(dataset))
    for verb in ("plan", "status"):  # no lock held: they read around the damage and move nothing
        result = run_datasetd("--log-format", "json", verb, str(dataset.manifest))
        assert "Traceback" not in result.stderr and result.returncode in (0, 1), result.stderr
    assert not list((dataset.root / ".datasetd").glob("journal.sqlite.damaged-*"))

    result = run_datasetd("--log-format", "json", "apply", str(dataset.manifest))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    rebuilt = [e for e in events if e["event"] == "journal.rebuilt"]
    assert len(rebuilt) == 1 and rebuilt[0]["moved_to"].startswith(str(dataset.root / JOURNAL) + ".damaged-")
    assert list((dataset.root / ".datasetd").glob("journal.sqlite.damaged-*")), "the damaged file is kept"
    # Rebuilt by re-proving every folder against its tar, not by trusting it.
    assert [s[2] for s in dataset.steps()].count("AdoptUnit") == len(WNIDS) + 1
    assert tree_digest(dataset.root / "train") == gnu_tar_reference(dataset.train_tar, tmp_path / "gnu")
    with dataset.journal() as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == journal_mod.GENERATION


def test_verify_on_a_damaged_journal_rebuilds_it_and_says_what_it_could_not_prove(dataset: Dataset) -> None:
    assert dataset.run("apply") == 0
    _random_bytes(_checkpointed(dataset))
    result = run_datasetd("verify", str(dataset.manifest))
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 1, "nothing is recorded any more: verify cannot call the tree clean"
    assert "journal.rebuilt" in result.stderr


def test_damage_met_mid_run_moves_the_journal_aside_and_the_same_apply_rebuilds_it(
        dataset: Dataset, tmp_path: Path) -> None:
    assert dataset.run("apply") == 0
    _file_table_overwritten(_checkpointed(dataset))
    victim = sorted((dataset.root / "train" / WNIDS[0]).iterdir())[0]
    victim.unlink()  # the class folder changed: apply reads its file rows, and meets the damage
    result = run_datasetd("--log-format", "json", "apply", str(dataset.manifest))
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    rebuilt = [e for e in events if e["event"] == "journal.rebuilt"]
    assert len(rebuilt) == 1 and "malformed" in rebuilt[0]["problem"], rebuilt
    assert list((dataset.root / ".datasetd").glob("journal.sqlite.damaged-*")), "the damaged file is kept"
    assert victim.exists()
    assert tree_digest(dataset.root / "train") == gnu_tar_reference(dataset.train_tar, tmp_path / "gnu")
    assert dataset.run("apply") == 0 and not [s for s in dataset.steps() if s[3] == "failed"]


def test_verify_reads_every_page_and_finds_damage_the_open_check_leaves_to_it(dataset: Dataset) -> None:
    assert dataset.run("apply") == 0
    _file_table_overwritten(_checkpointed(dataset))
    result = run_datasetd("verify", str(dataset.manifest))
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 1 and "journal.rebuilt" in result.stderr, result.stderr
    # Found before verifying anything (not by a read halfway): what it reports is what it could not prove.
    assert "the journal is damaged" not in result.stderr and "BAD " in result.stdout, result.stdout


def test_journal_generations_upgrade_and_a_newer_one_is_refused_in_one_line(dataset: Dataset) -> None:
    assert dataset.run("apply") == 0
    db = dataset.journal()
    assert db.execute("PRAGMA user_version").fetchone()[0] == journal_mod.GENERATION
    db.execute("PRAGMA user_version=0")  # a journal from before generations existed
    db.close()
    assert dataset.run("apply") == 0
    db = dataset.journal()
    assert db.execute("PRAGMA user_version").fetchone()[0] == journal_mod.GENERATION
    assert [s[2] for s in dataset.steps()].count("AdoptUnit") == 0, "an upgrade keeps every record"
    db.execute(f"PRAGMA user_version={journal_mod.GENERATION + 5}")
    db.close()
    result = run_datasetd("apply", str(dataset.manifest))
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"journal generation {journal_mod.GENERATION + 5} is newer" in lines[0], result.stderr


@pytest.mark.parametrize("pid", ['"1234"', "[1, 2]", str(2**80), "0", "-1", "PID1"],
                         ids=["string", "list", "huge", "zero", "minus-one", "a-live-unrelated-process"])
def test_a_hand_edited_status_json_is_ignored_and_rewritten(dataset: Dataset, pid: str) -> None:
    assert dataset.run("apply") == 0
    status = dataset.root / ".datasetd/status.json"
    shutil.rmtree(dataset.root / "train" / WNIDS[0])  # the truth on disk is no longer converged
    pid = str(os.getpid()) if pid == "PID1" else pid  # alive, but it is not a datasetd holding the root
    status.write_text('{"schema": 1, "pid": ' + pid + ', "state": "converged", "components": {"train": '
                      '{"phase": "ready", "last_error": 7}}}')
    result = run_datasetd("status", "--json", str(dataset.manifest))
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 1, "a dead daemon's 'converged' was taken as current"
    snap = json.loads(result.stdout)
    assert snap["state"] == "idle" and snap["components"]["train"]["phase"] != "ready"
    assert dataset.run("apply") == 0
    assert json.loads(status.read_text())["state"] == "converged"


@pytest.mark.parametrize("text", ["", "[1, 2]", '{"components": [1]}', "{not json", '"x"'])
def test_a_malformed_status_json_never_raises(dataset: Dataset, text: str) -> None:
    assert dataset.run("apply") == 0
    (dataset.root / ".datasetd/status.json").write_text(text)
    result = run_datasetd("status", str(dataset.manifest))
    assert "Traceback" not in result.stderr and result.returncode == 0, result.stderr


def test_workers_below_one_is_a_one_line_usage_error(dataset: Dataset) -> None:
    for verb in ("apply", "verify"):
        result = run_datasetd(verb, "--workers", "-1", str(dataset.manifest))
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "--workers" in lines[0], result.stderr
    assert not (dataset.root / "train").exists()


def test_an_into_longer_than_the_os_allows_is_a_one_line_manifest_error(dataset: Dataset) -> None:
    for into in ("x" * 300, "/".join(["y" * 200] * 25)):
        text = dataset.manifest.read_text().replace('into = "train"', f'into = "{into}"')
        dataset.manifest.write_text(text)
        result = run_datasetd("apply", str(dataset.manifest))
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "components.train.into" in lines[0], result.stderr
        text = dataset.manifest.read_text().replace(f'into = "{into}"', 'into = "train"')
        dataset.manifest.write_text(text)


def _unless_vanished(_func: object, _path: str, exc: tuple[type[BaseException], BaseException, object]) -> None:
    if not issubclass(exc[0], FileNotFoundError):
        raise exc[1]


def test_the_lock_survives_rm_rf_of_the_state_dir_under_a_running_daemon(dataset: Dataset,
                                                                          tmp_path: Path) -> None:
    log = tmp_path / "daemon.log"
    with log.open("wb") as err:
        daemon = subprocess.Popen([*datasetd_cmd(), "--log-format", "json", "run", str(dataset.manifest)],
                                  stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 60
        while "apply.converged" not in log.read_text():
            assert daemon.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        # like `rm -rf`: a file the daemon removes meanwhile (SQLite's -wal at a checkpoint) is not an error
        shutil.rmtree(dataset.root / ".datasetd", onerror=_unless_vanished)
        second = run_datasetd("apply", str(dataset.manifest))
        assert second.returncode == 2, second.stderr
        assert "another datasetd" in second.stderr and len(second.stderr.strip().splitlines()) == 1
        assert not (dataset.root / ".datasetd/journal.sqlite").exists(), "the second datasetd wrote state"
        status = run_datasetd("status", "--json", str(dataset.manifest))
        assert "Traceback" not in status.stderr
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
    again = run_datasetd("apply", str(dataset.manifest))
    assert again.returncode == 0, again.stderr


def test_status_trusts_the_daemons_file_only_while_it_holds_the_lock(dataset: Dataset) -> None:
    from datasetd.state.lock import RootLock

    assert dataset.run("apply") == 0
    status = dataset.root / ".datasetd/status.json"
    data = json.loads(status.read_text())
    data.update(state="running", pid=os.getpid())
    status.write_text(json.dumps(data))
    free = json.loads(run_datasetd("status", "--json", str(dataset.manifest)).stdout)
    assert free["state"] == "converged" and free["pid"] is None, "no lock held: computed from disk"
    with RootLock(dataset.root):
        held = json.loads(run_datasetd("status", "--json", str(dataset.manifest)).stdout)
    assert held["state"] == "running", "the lock is held: the holder's file is the truth"
