"""`datasetd wait` (exit 0 ready / 1 error / 3 timeout) and `datasetd.wait()`, against real applies."""

from __future__ import annotations

import subprocess

import pytest

import datasetd
from conftest import Dataset, datasetd_cmd, run_datasetd
from datasetd.waiting import ComponentFailed


def test_wait_blocks_until_an_apply_in_another_process_converges(dataset: Dataset) -> None:
    waiter = subprocess.Popen([*datasetd_cmd(), "wait", str(dataset.manifest), "--timeout", "120"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert waiter.poll() is None
        applied = run_datasetd("apply", str(dataset.manifest))
        assert applied.returncode == 0, applied.stderr
        _out, err = waiter.communicate(timeout=60)
        assert waiter.returncode == 0, err
    finally:
        waiter.kill()
    assert datasetd.wait(dataset.manifest, components=["train"], timeout=5) == {"train": "ready"}


def test_wait_times_out_with_3_naming_what_is_not_ready(dataset: Dataset) -> None:
    out = run_datasetd("wait", str(dataset.manifest), "--component", "val", "--timeout", "0.5")
    assert out.returncode == 3
    assert "not ready after 0.5 s: val (pending)" in out.stderr
    with pytest.raises(TimeoutError):
        datasetd.wait(dataset.manifest, timeout=0.2)


def test_wait_returns_1_when_a_component_is_in_error(dataset: Dataset) -> None:
    text = dataset.manifest.read_text().replace('into = "train"\n', 'into = "train"\nexpect = { files = 49 }\n', 1)
    dataset.manifest.write_text(text)
    assert run_datasetd("apply", str(dataset.manifest)).returncode == 1
    out = run_datasetd("wait", str(dataset.manifest), "--timeout", "30")
    assert out.returncode == 1
    assert "train: components.train.expect not met" in out.stderr and "expected 49" in out.stderr
    assert run_datasetd("wait", str(dataset.manifest), "--component", "val", "--timeout", "30").returncode == 0
    with pytest.raises(ComponentFailed, match="expected 49"):
        datasetd.wait(dataset.manifest)


def test_wait_on_an_unknown_component_is_a_usage_error(dataset: Dataset) -> None:
    out = run_datasetd("wait", str(dataset.manifest), "--component", "tarin", "--timeout", "1")
    assert out.returncode == 2 and "no component named 'tarin'" in out.stderr


def test_wait_keeps_waiting_while_an_apply_is_still_creating_the_journal(dataset: Dataset) -> None:
    """The moment between a writer creating journal.sqlite and committing its schema (generation 0,
    no tables): a reader there once failed with "no such table: archive", and `wait` exited 1."""
    import sqlite3

    state = dataset.root / ".datasetd"
    state.mkdir()
    db = sqlite3.connect(state / "journal.sqlite")
    db.execute("PRAGMA journal_mode=WAL")  # what JournalDB does before its first migration
    try:
        out = run_datasetd("wait", str(dataset.manifest), "--timeout", "0.5")
        assert out.returncode == 3, out.stderr
        assert "not ready after 0.5 s: train (pending), val (pending)" in out.stderr
        assert run_datasetd("status", str(dataset.manifest)).returncode == 1  # not converged, no traceback
    finally:
        db.close()
