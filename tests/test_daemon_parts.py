"""The daemon's parts in process: background priority, signals in forked workers, watchdog health, STATUS=, metrics."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from conftest import Dataset
from datasetd.service.jobs import VERIFY_NICE
from datasetd.service.metrics import StatusCollector, parse_address
from datasetd.service.triggers import signal_handlers
from datasetd.service.wiring import status_line

BOUND = 30.0


def test_the_verification_worker_reads_at_background_priority() -> None:
    """lower_priority() runs in the deep-verify worker; exec keeps both priorities, so ps/ionice can read them."""
    if shutil.which("ionice") is None:
        pytest.skip("ionice (util-linux) is not installed")
    code = ("import os; from datasetd.service.jobs import lower_priority; lower_priority(); "
            "os.execvp('sh', ['sh', '-c', 'ionice -p $$; cut -d\" \" -f19 /proc/$$/stat'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=BOUND, check=True)
    ionice, nice = out.stdout.split("\n")[:2]
    assert ionice == "best-effort: prio 7", out.stdout
    assert int(nice) >= VERIFY_NICE


def test_forked_workers_get_default_signal_handlers_back() -> None:
    """The daemon's SIGTERM handler only posts to its own queue: inherited by a worker it would make SIGTERM a no-op."""
    posted: list[str] = []
    with signal_handlers(posted.append):
        assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN)
        pid = os.fork()
        if pid == 0:  # the child reports through its exit status only
            os._exit(0 if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL else 1)
        _, status_code = os.waitpid(pid, 0)
        os.kill(os.getpid(), signal.SIGHUP)
    assert os.waitstatus_to_exitcode(status_code) == 0
    assert posted == ["reload"]


def test_a_silent_job_withholds_the_watchdog_ping(dataset: Dataset) -> None:
    from datasetd.config.parsing import load
    from datasetd.service import daemon as daemon_mod
    from datasetd.service.jobs import Job

    manifest = load(dataset.manifest)
    d = daemon_mod.Daemon(dataset.manifest, manifest, threading.Event())
    now = time.monotonic()
    assert d._healthy(now)
    d.job = Job("reconcile", manifest, lambda job: None, lambda: None)  # never started: it cannot beat
    assert d._healthy(now)
    assert not d._healthy(now + daemon_mod.STALL_LIMIT + 1)
    d.job.touch()
    assert d._healthy(time.monotonic())


def test_status_line_names_progress_per_component() -> None:
    snap = {"state": "running", "components": {
        "train": {"phase": "unpacking", "classes_done": 412, "classes_total": 1000, "files_total": 9},
        "val": {"phase": "ready"},
        "extra": {"phase": "fetching", "bytes_done": 50, "bytes_total": 200, "classes_total": 0, "files_total": 0},
    }, "manifest_error": "m.toml: components.x.size: not an integer"}
    assert status_line(snap) == ("running: extra fetching 25%; train unpacking 412/1000 classes; val ready; "
                                 "manifest edit rejected (see status.json)")


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1:9877", ("127.0.0.1", 9877)), ("[::1]:0", ("::1", 0)), (":9877", ("0.0.0.0", 9877)),
    ("localhost", None), ("127.0.0.1:http", None), ("127.0.0.1:70000", None),
])
def test_metrics_address(text: str, expected: tuple[str, int] | None) -> None:
    if expected is None:
        with pytest.raises(ValueError):
            parse_address(text)
    else:
        assert parse_address(text) == expected


def test_transport_detail_becomes_metrics() -> None:
    snap = {"state": "running", "components": {"train": {
        "phase": "fetching", "bytes_done": 10, "bytes_total": 100, "rate": 5.0, "eta_seconds": 18.0,
        "last_error": None, "detail": {"peers": 7, "seeds": 2, "health": "ok", "hint": "", "dht_nodes": 40}}}}
    families = {f.name: f for f in StatusCollector(lambda: snap).collect()}
    assert families["datasetd_transport_peers"].samples[0].value == 7
    assert families["datasetd_transport_dht_nodes"].samples[0].value == 40
    assert "datasetd_transport_health" not in families
    assert families["datasetd_component_eta_seconds"].samples[0].value == 18.0
    fetching = [s for s in families["datasetd_component_phase"].samples if s.value == 1]
    assert [s.labels for s in fetching] == [{"component": "train", "phase": "fetching"}]
