"""The reactor's own bookkeeping (one StepState per key), with real sources, tars and journal.

Each test reproduces a bug of the five-dict executor: a backoff that outlived
its component, and a group commit that outlived a component's removal.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
from pathlib import Path

from conftest import Dataset, sha256, write_manifest
from datasetd.config.manifest import Manifest
from datasetd.config.parsing import load
from datasetd.core import model
from datasetd.engine.executor import Executor
from datasetd.engine.steps import STEPS
from datasetd.engine.stepstate import Outcome
from datasetd.sources.http import HttpFetcher
from datasetd.state.journal import JournalDB
from datasetd.state.status import StatusBoard
from http_server import Fault, FaultServer

DL = b"x" * 50_000


def _manifest(tmp_path: Path, root: Path, url: str, *, dl_enabled: bool = True, val: str = "") -> Manifest:
    return load(write_manifest(tmp_path / "m.toml", root, f"""
[components.dl]
source = "http"
url = "{url}"
file = "downloads/dl.bin"
size = {len(DL)}
sha256 = "{sha256(DL)}"
unpack = "none"
enabled = {str(dl_enabled).lower()}
{val}"""))


class Running:
    """An Executor in a thread, counting the rounds of its loop."""

    def __init__(self, manifest: Manifest, **kw: object) -> None:
        self.journal = JournalDB(manifest.state_dir)
        self.rounds = 0
        self.outcome: Outcome | None = None
        self.error: BaseException | None = None
        self.executor = Executor(manifest, self.journal, StatusBoard(manifest), workers=1,
                                 sources={"http": HttpFetcher(retry_base=0.05)}, on_round=self._round, **kw)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _round(self) -> None:
        self.rounds += 1

    def _run(self) -> None:
        try:
            self.outcome = self.executor.run()
        except BaseException as exc:
            self.error = exc


def _steps(root: Path) -> list[tuple[str, str, str, str]]:
    db = root / ".datasetd" / "journal.sqlite"
    if not db.exists():
        return []
    with sqlite3.connect(db, timeout=5) as conn:
        return list(conn.execute("SELECT component, unit, action, outcome FROM step ORDER BY id"))


def _wait_for(what: str, predicate: object, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_component_disabled_while_in_backoff_converges_and_does_not_spin(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "downloads").mkdir(parents=True)
    with FaultServer(files={"/dl.bin": DL}) as server:
        manifest = _manifest(tmp_path, root, server.url("/dl.bin"))
        # Another writer holds the part file: the download fails temporarily, retried in 30 s.
        holder = os.open(root / "downloads" / "dl.bin.part", os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(holder, fcntl.LOCK_EX)
        try:
            run = Running(manifest)
            _wait_for("the retry", lambda: ("dl", "", "Fetch", "retry") in _steps(root))
            run.executor.reload(_manifest(tmp_path, root, server.url("/dl.bin"), dl_enabled=False))
            run.thread.join(timeout=20)  # the old executor waited out the 30 s delay, then spun forever
            alive = run.thread.is_alive()
            run.executor.stop.set()
            run.thread.join(timeout=30)
        finally:
            os.close(holder)
    assert not alive, "the pass did not converge after the component in backoff was disabled"
    assert run.error is None and run.outcome is not None and run.outcome.ok
    assert run.rounds < 100, f"{run.rounds} rounds: the loop spun"


def test_removing_a_component_whose_units_wait_for_the_group_commit_does_not_abort(
        tmp_path: Path, dataset: Dataset) -> None:
    root = dataset.root
    val = f"""
[components.val]
source = "file"
path = "sources/val.tar"
sha256 = "{sha256(dataset.val_bytes)}"
unpack = "tar"
into = "val"
"""
    with FaultServer(files={"/dl.bin": DL}) as server:
        # The download stalls, so a step stays in flight and val's verified unit waits for the commit.
        server.add_fault("/dl.bin", Fault(stall_after=0, stall_for=60), times=None)
        manifest = _manifest(tmp_path, root, server.url("/dl.bin"), val=val)
        run = Running(manifest, commit_every=3600.0)
        _wait_for("val verified", lambda: ("val", ".", "VerifyUnit", "ok") in _steps(root))
        run.executor.reload(_manifest(tmp_path, root, server.url("/dl.bin")))  # val removed
        time.sleep(1.5)  # a reload is picked up within a second
        run.executor.stop.set()
        run.thread.join(timeout=60)
    assert not run.thread.is_alive()
    assert run.error is None, f"the pass aborted: {run.error!r}"
    assert run.outcome is not None and run.outcome.stopped
    assert ("val", ".", "Commit", "ok") not in _steps(root)  # a removed component's units are not committed


def test_the_step_table_covers_every_concrete_action_type() -> None:
    def concrete(cls: type) -> set[type]:
        out = set()
        for sub in cls.__subclasses__():
            if not sub.__name__.startswith("_"):
                out.add(sub)
            out |= concrete(sub)
        return out

    actions = {c for c in concrete(model.Action) if c.__module__ == model.__name__} - {model.UnitAction, model.Blocked}
    assert actions == set(STEPS), "an Action type without a Step (or a Step for no Action)"
    for kind in actions:
        assert kind.runs_in in ("worker", "process", "thread", "inline")
        assert kind.phase in ("fetching", "unpacking", "verifying")
