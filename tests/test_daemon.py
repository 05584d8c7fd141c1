"""`datasetd run` as a real process: sd_notify over a real socket, live manifest edits, signals, timers, metrics."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import WNIDS, Dataset, datasetd_cmd, run_datasetd, sha256, write_manifest

BOUND = 30.0  # every wait below is bounded by this; a healthy run needs a small fraction of it


def wait_until(check: Callable[[], Any], what: str, timeout: float = BOUND) -> Any:
    """Poll `check` until it returns something truthy; fail naming `what` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


# ---- a stand-in for systemd's notify socket -----------------------------------------------------


class Notifications:
    """Every datagram the daemon sends, read as it arrives (an unread socket would block the sender)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.2)
        self.messages: list[str] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._closed.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.messages.append(data.decode())

    def all(self) -> list[str]:
        with self._lock:
            return list(self.messages)

    def wait_for(self, message: str, after: int = 0) -> int:
        """Index of the first message starting with `message` at or after index `after`."""
        found: list[int] = []

        def find() -> bool:
            found[:] = [i for i, m in enumerate(self.all()) if i >= after and m.startswith(message)][:1]
            return bool(found)

        wait_until(find, f"{message!r} on the notify socket")
        return found[0]

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=5)
        self.sock.close()


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[Notifications]:
    path = str(tmp_path / "notify")
    if len(path) >= 100:  # sun_path holds 108 bytes
        path = f"/tmp/datasetd-{uuid.uuid4().hex[:12]}"
    n = Notifications(path)
    yield n
    n.close()
    if path.startswith("/tmp/datasetd-"):
        os.unlink(path)


# ---- the daemon under test ----------------------------------------------------------------------


class Daemon:
    def __init__(self, manifest: Path, log: Path, env: dict[str, str]) -> None:
        self.manifest = manifest
        self.log = log
        with log.open("wb") as err:
            self.proc = subprocess.Popen([*datasetd_cmd(), "--log-format", "json", "run", str(manifest)],
                                         stdout=subprocess.DEVNULL, stderr=err, env=env)

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text().splitlines():
            if line.startswith("{"):
                event = json.loads(line)
                if name is None or event["event"] == name:
                    out.append(event)
        return out

    def wait_event(self, name: str, count: int = 1) -> list[dict[str, Any]]:
        wait_until(lambda: len(self.events(name)) >= count, f"{count} {name} event(s) in {self.log}")
        return self.events(name)

    def send(self, sig: signal.Signals) -> None:
        assert self.proc.poll() is None, f"the daemon exited early ({self.proc.returncode}): {self.log.read_text()}"
        self.proc.send_signal(sig)

    def stop(self) -> int:
        self.send(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=BOUND)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the daemon did not exit within {BOUND}s of SIGTERM")

    def alive(self) -> bool:
        return self.proc.poll() is None


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    started: list[Daemon] = []

    def launch(manifest: Path, notify: Notifications | None = None, watchdog_usec: int | None = None) -> Daemon:
        ours = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
        env = {k: v for k, v in os.environ.items() if k not in ours}
        if notify is not None:
            env["NOTIFY_SOCKET"] = notify.path
        if watchdog_usec is not None:
            env["WATCHDOG_USEC"] = str(watchdog_usec)  # no WATCHDOG_PID: the watchdog is for whoever reads it
        daemon = Daemon(manifest, tmp_path / f"daemon{len(started)}.log", env)
        started.append(daemon)
        return daemon

    yield launch
    for daemon in started:  # by pid, only what this test started
        if daemon.alive():
            daemon.proc.kill()
            daemon.proc.wait()


def components(dataset: Dataset, train: bool = True, val: bool = True, val_extra: str = "") -> str:
    text = ""
    if train:
        text += f"""
[components.train]
source = "file"
path = "sources/train.tar"
sha256 = "{sha256(dataset.train_bytes)}"
unpack = "class-tars"
into = "train"
"""
    if val:
        text += f"""
[components.val]
source = "file"
path = "sources/val.tar"
sha256 = "{sha256(dataset.val_bytes)}"
unpack = "tar"
into = "val"
{val_extra}
"""
    return text


def replace_manifest(path: Path, text: str) -> None:
    """The way editors save: a temp file in the same directory, renamed over the manifest."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:6]}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def status(dataset: Dataset) -> dict[str, Any]:
    try:
        return dataset.status()
    except (OSError, ValueError):
        return {}


def phases(dataset: Dataset) -> dict[str, str]:
    return {name: c["phase"] for name, c in status(dataset).get("components", {}).items()}


def converged(dataset: Dataset) -> bool:
    return status(dataset).get("state") == "converged"


def our_processes(marker: str) -> list[int]:
    """Pids whose command line names this test's manifest: the daemon and any worker it forked."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in entry.joinpath("cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


# ---- the tests ------------------------------------------------------------------------------------


def test_ready_after_first_plan_then_sigterm_stops_workers_and_exits_0(
        dataset: Dataset, notify: Notifications, start: Callable[..., Daemon]) -> None:
    daemon = start(dataset.manifest, notify, watchdog_usec=400_000)
    ready = notify.wait_for("READY=1")
    assert daemon.stop() == 0, daemon.log.read_text()  # SIGTERM while the first pass is likely mid-way

    messages = notify.all()
    assert any(m.startswith("STATUS=") for m in messages), messages
    assert "WATCHDOG=1" in messages, messages
    assert "STOPPING=1" in messages[ready:], messages
    assert status(dataset)["state"] == "stopped"
    assert daemon.events("daemon.stopping")[0]["signal"] == "SIGTERM"
    wait_until(lambda: not our_processes(str(dataset.manifest)), "the daemon's worker processes to be gone")


def test_converges_pings_and_refuses_a_second_daemon(
        dataset: Dataset, notify: Notifications, start: Callable[..., Daemon]) -> None:
    daemon = start(dataset.manifest, notify, watchdog_usec=400_000)
    wait_until(lambda: converged(dataset), "status.json to say converged")
    assert sorted(p.name for p in (dataset.root / "train").iterdir()) == sorted(WNIDS)
    assert (dataset.root / "val").is_dir()
    pings = notify.all().count("WATCHDOG=1")
    wait_until(lambda: notify.all().count("WATCHDOG=1") >= pings + 3, "the watchdog pings to go on while idle")
    notify.wait_for("STATUS=converged: train ready; val ready")

    second = run_datasetd("run", str(dataset.manifest), timeout=BOUND)
    assert second.returncode == 2
    assert f"another datasetd (pid {daemon.proc.pid}" in second.stderr, second.stderr
    assert daemon.alive()
    assert daemon.stop() == 0
    assert status(dataset)["state"] == "stopped"


def test_edits_apply_without_restart_and_bad_edits_keep_the_last_good_manifest(
        dataset: Dataset, notify: Notifications, start: Callable[..., Daemon]) -> None:
    m = dataset.manifest
    write_manifest(m, dataset.root, components(dataset, val=False))
    daemon = start(m, notify)
    wait_until(lambda: converged(dataset) and phases(dataset) == {"train": "ready"}, "train alone to converge")
    assert not (dataset.root / "val").exists()
    pid = status(dataset)["pid"]

    # A new component starts without a restart.
    replace_manifest(m, m.read_text() + components(dataset, train=False))
    wait_until(lambda: phases(dataset) == {"train": "ready", "val": "ready"}, "val to converge after the edit")
    assert (dataset.root / "val").is_dir() and status(dataset)["pid"] == pid == daemon.proc.pid
    good = m.read_text()

    # Invalid edits: the daemon keeps running the last good manifest and says what is wrong.
    replace_manifest(m, good + "\n[components.val\n")
    error = wait_until(lambda: status(dataset).get("manifest_error"), "the TOML error in status.json")
    assert str(m) in error and "(at line" in error and "column" in error, error
    replace_manifest(m, good.replace('unpack = "tar"', 'unpack = "zip"'))
    wait_until(lambda: "components.val.unpack" in status(dataset).get("manifest_error", ""),
               "the key path of the bad value in status.json")
    replace_manifest(m, good.replace(f'root = "{dataset.root}"', f'root = "{dataset.root}2"'))
    wait_until(lambda: "root cannot change while running" in status(dataset).get("manifest_error", ""),
               "the refused root change in status.json")
    assert daemon.alive()
    assert phases(dataset) == {"train": "ready", "val": "ready"}
    assert len(daemon.events("daemon.reload_failed")) >= 3

    # A good edit clears the error; a disabled component stops but keeps its data.
    replace_manifest(m, good.replace('into = "val"', 'into = "val"\nenabled = false'))
    wait_until(lambda: "manifest_error" not in status(dataset) and phases(dataset).get("val") == "disabled",
               "the disabling edit to clear the error")
    assert (dataset.root / "val").is_dir() and any((dataset.root / "val").rglob("*.JPEG"))

    # SIGHUP rereads the manifest: RELOADING=1, then READY=1.
    mark, reloads = len(notify.all()), len(daemon.events("daemon.reloaded"))
    daemon.send(signal.SIGHUP)
    reloading = notify.wait_for("RELOADING=1", after=mark)
    notify.wait_for("READY=1", after=reloading + 1)
    daemon.wait_event("daemon.reloaded", count=reloads + 1)
    assert daemon.stop() == 0


def test_the_timer_reconcile_repairs_a_deleted_file_and_metrics_are_served(
        dataset: Dataset, start: Callable[..., Daemon]) -> None:
    write_manifest(dataset.manifest, dataset.root, 'reconcile_every = "1s"\nmetrics = "127.0.0.1:0"\n'
                   + components(dataset))
    daemon = start(dataset.manifest)
    wait_until(lambda: converged(dataset), "the first pass to converge")
    victim = next((dataset.root / "train" / WNIDS[3]).iterdir())
    content = victim.read_bytes()
    passes = len(daemon.events("apply.started"))
    victim.unlink()
    wait_until(lambda: victim.exists() and victim.read_bytes() == content and converged(dataset),
               f"a timer pass to restore {victim}")
    assert len(daemon.events("apply.started")) > passes
    assert not daemon.events("daemon.reloaded"), "nothing but the timer may have started the repair"

    address = status(dataset)["metrics"]

    def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = urllib.request.urlopen(f"http://{address}/metrics", timeout=10).read().decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    # The timer starts a pass every second: wait for a scrape between two of them.
    samples = wait_until(lambda: (s := scrape())[("datasetd_state", (("state", "converged"),))] == 1 and s,
                         "a scrape that shows the converged state")
    assert samples[("datasetd_component_phase", (("component", "train"), ("phase", "ready")))] == 1
    assert samples[("datasetd_component_phase", (("component", "train"), ("phase", "error")))] == 0
    assert samples[("datasetd_component_classes_done", (("component", "train"),))] == len(WNIDS)
    assert samples[("datasetd_component_files_total", (("component", "val"),))] > 0
    assert daemon.stop() == 0


def test_deep_verify_finds_a_silent_corruption_and_a_pass_repairs_it(
        dataset: Dataset, start: Callable[..., Daemon]) -> None:
    write_manifest(dataset.manifest, dataset.root, 'reconcile_every = "1h"\ndeep_verify_every = "1s"\n'
                   + components(dataset))
    daemon = start(dataset.manifest)
    wait_until(lambda: converged(dataset), "the first pass to converge")
    daemon.wait_event("verify.finished")
    victim = sorted((dataset.root / "train" / WNIDS[5]).iterdir())[0]
    content = victim.read_bytes()
    victim.write_bytes(bytes(b ^ 0xFF for b in content))  # same size: only re-hashing can see it
    mismatch = daemon.wait_event("verify.mismatch")[0]
    assert mismatch["component"] == "train" and mismatch["unit"] == WNIDS[5], mismatch
    wait_until(lambda: victim.read_bytes() == content, f"the pass after the mismatch to repair {victim}")
    assert daemon.stop() == 0

    # One job at a time: no deep verification ever ran while a pass did.
    running = None
    for event in daemon.events():
        name = event["event"]
        if name in ("apply.started", "verify.started"):
            assert running is None, f"{name} while {running} was running"
            running = name
        elif name in ("apply.converged", "apply.failed", "apply.stopped", "apply.aborted", "verify.finished",
                      "verify.aborted"):
            running = None


def test_an_overdue_deep_verification_runs_soon_after_a_restart(dataset: Dataset,
                                                                 start: Callable[..., Daemon]) -> None:
    write_manifest(dataset.manifest, dataset.root, 'deep_verify_every = "1h"\n' + components(dataset))
    last = dataset.root / ".datasetd" / "deep_verify.last"
    last.parent.mkdir(parents=True)
    last.write_text(f"{time.time() - 7200:.0f}\n")  # a daemon that verified two hours ago, then restarted
    daemon = start(dataset.manifest)
    finished = daemon.wait_event("verify.finished")[0]
    assert finished["units"] == len(WNIDS) + 1 and finished["mismatched"] == 0, finished
    assert float(last.read_text()) > time.time() - BOUND
    assert daemon.stop() == 0


def test_an_unusable_metrics_address_refuses_to_start(dataset: Dataset) -> None:
    write_manifest(dataset.manifest, dataset.root, 'metrics = "localhost"\n' + components(dataset))
    result = run_datasetd("run", str(dataset.manifest), timeout=BOUND)
    assert result.returncode == 2
    assert "daemon.metrics" in result.stderr and "HOST:PORT" in result.stderr, result.stderr

