"""The systemd side: sd_notify over real unix datagram sockets, and the unit checked by systemd-analyze."""

from __future__ import annotations

import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from datasetd.config.manifest import DaemonSettings
from datasetd.service import systemd

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "systemd" / "datasetd@.service"
DROPIN = REPO / "systemd" / "example-dropin-data.conf"

# ---------------------------------------------------------------- sd_notify


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket playing systemd's part, with sender credentials switched on."""
    path = str(tmp_path / "notify")
    if len(path) >= 100:  # sun_path holds 108 bytes
        path = f"/tmp/datasetd-{uuid.uuid4().hex[:12]}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    sock.settimeout(15)
    yield sock, path
    sock.close()
    if path.startswith("/tmp/datasetd-"):
        os.unlink(path)


def _receive(sock: socket.socket) -> tuple[str, int]:
    """One datagram and the pid the kernel vouches for (what NotifyAccess=main checks)."""
    try:
        data, ancdata, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(struct.calcsize("iII")))
    except TimeoutError:
        pytest.fail("no notification arrived within 15s")
    pids = [struct.unpack("iII", d[:12])[0] for lvl, typ, d in ancdata
            if lvl == socket.SOL_SOCKET and typ == socket.SCM_CREDENTIALS]
    assert len(pids) == 1
    return data.decode(), pids[0]


def _run(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    ours = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
    clean = {k: v for k, v in os.environ.items() if k not in ours}
    script = "from datasetd.service import systemd as sd\n" + code
    return subprocess.run([sys.executable, "-c", script], env=clean | env, capture_output=True, text=True,
                          timeout=30)


def test_a_service_process_notifies_every_state(receiver: tuple[socket.socket, str]) -> None:
    sock, path = receiver
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    child = _run(
        "import os\n"
        "print(os.getpid())\n"
        "sd.ready(); sd.status('train: 12/1000 classes\\nextracting'); sd.watchdog_ping()\n"
        "sd.reloading(); sd.ready(); sd.stopping()\n"
        "print(sd.notify('EXTEND_TIMEOUT_USEC=1000000'))\n",
        NOTIFY_SOCKET=path,
    )
    assert child.returncode == 0, child.stderr
    pid_line, sent = child.stdout.split()
    assert sent == "True"

    got = [_receive(sock) for _ in range(7)]
    assert {pid for _, pid in got} == {int(pid_line)}, "every datagram must come from the main process itself"
    messages = [m for m, _ in got]
    assert messages[:3] == ["READY=1", "STATUS=train: 12/1000 classes extracting", "WATCHDOG=1"]
    reloading = re.fullmatch(r"RELOADING=1\nMONOTONIC_USEC=(\d+)", messages[3])
    assert reloading, messages[3]
    assert before <= int(reloading.group(1)) <= time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert messages[4:] == ["READY=1", "STOPPING=1", "EXTEND_TIMEOUT_USEC=1000000"]


def test_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"datasetd-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(15)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert systemd.notify("READY=1")
        assert sock.recv(4096) == b"READY=1"


def test_without_notify_socket_nothing_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.notify("READY=1") is False
    systemd.ready()
    systemd.stopping()
    monkeypatch.setenv("NOTIFY_SOCKET", "relative/path")
    assert systemd.notify("READY=1") is False


def test_a_vanished_manager_is_logged_once_and_never_raises(tmp_path: Path) -> None:
    child = _run("print([sd.notify('WATCHDOG=1') for _ in range(3)])\n",
                 NOTIFY_SOCKET=str(tmp_path / "gone"))
    assert child.returncode == 0, child.stderr
    out = child.stdout + child.stderr
    assert "[False, False, False]" in out
    assert out.count("notify.failed") == 1, out


@pytest.mark.parametrize(
    ("usec", "pid_offset", "expected"),
    [
        ("60000000", 0, 30.0),
        ("60000000", None, 30.0),
        ("5000000", 0, 2.5),
        ("60000000", 1, None),  # WATCHDOG_PID names another process
        (None, None, None),
        ("0", None, None),
        ("soon", None, None),
    ],
)
def test_watchdog_interval(monkeypatch: pytest.MonkeyPatch, usec: str | None, pid_offset: int | None,
                           expected: float | None) -> None:
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    if usec is not None:
        monkeypatch.setenv("WATCHDOG_USEC", usec)
    if pid_offset is not None:
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + pid_offset))
    assert systemd.watchdog_interval() == expected


def test_a_child_process_is_not_the_one_the_watchdog_watches() -> None:
    code = "print(sd.watchdog_interval())\n"
    child = _run(code, WATCHDOG_USEC="60000000", WATCHDOG_PID=str(os.getpid()))
    assert child.stdout.strip() == "None", child.stderr
    assert _run(code, WATCHDOG_USEC="60000000").stdout.strip() == "30.0"


# ---------------------------------------------------------------- the unit

ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None,
                                   reason="systemd-analyze is not installed (apt install systemd)")


def _analyze(*args: str) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    return subprocess.run([ANALYZE, *args], capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def analyze_version() -> int:
    out = _analyze("--version").stdout
    match = re.match(r"systemd (\d+)", out)
    assert match, out
    if int(match.group(1)) < 250:
        pytest.skip(f"systemd-analyze {match.group(1)} has no `security --offline` (needs 250+)")
    return int(match.group(1))


def _fake_root(tmp_path: Path, unit_text: str) -> Path:
    """A root holding only the unit, its example drop-in, stub targets and stand-in executables.

    systemd is not PID 1 here (nor in CI), and `verify` resolves every unit and
    ExecStart binary below --root. So the unit is checked byte for byte as
    shipped (ExecStart stays /usr/bin/datasetd: a stand-in exists in the fake
    root), and any line of output is about this unit, never about the host's.
    """
    root = tmp_path / "root"
    units = root / "etc/systemd/system"
    (units / "datasetd@.service.d").mkdir(parents=True)
    (units / "datasetd@.service").write_text(unit_text)
    shutil.copy(DROPIN, units / "datasetd@.service.d/data.conf")
    for stub in ("sysinit.target", "basic.target", "shutdown.target", "network.target",
                 "network-online.target", "multi-user.target", "sockets.target", "paths.target",
                 "timers.target", "local-fs.target", "system.slice"):
        (units / stub).write_text("[Unit]\n")
    for exe in ("usr/bin/datasetd", "bin/kill"):
        (root / exe).parent.mkdir(parents=True, exist_ok=True)
        (root / exe).write_text("#!/bin/sh\n")
        (root / exe).chmod(0o755)
    return root


def _verify(root: Path) -> str:
    result = _analyze("verify", "--man=no", f"--root={root}", "datasetd@demo.service")
    return f"exit {result.returncode}\n{result.stdout}{result.stderr}".strip()


def _exposure(root: Path) -> float:
    result = _analyze("security", "--offline=true", f"--root={root}", "--no-pager", "datasetd@demo.service")
    match = re.search(r"Overall exposure level for datasetd@demo\.service: (\d+\.\d+)", result.stdout)
    assert match, f"no exposure level in systemd-analyze security's output:\n{result.stdout}{result.stderr}"
    return float(match.group(1))


@needs_analyze
def test_unit_verifies_without_a_warning(tmp_path: Path, analyze_version: int) -> None:
    assert _verify(_fake_root(tmp_path, UNIT.read_text())) == "exit 0"


@needs_analyze
def test_verify_in_the_fake_root_does_report_mistakes(tmp_path: Path, analyze_version: int) -> None:
    broken = UNIT.read_text().replace("ProtectClock=yes", "ProtectClok=yes")
    assert "Unknown key 'ProtectClok'" in _verify(_fake_root(tmp_path, broken))


@needs_analyze
def test_unit_exposure_is_at_most_1_5(tmp_path: Path, analyze_version: int) -> None:
    exposure = _exposure(_fake_root(tmp_path, UNIT.read_text()))
    assert exposure <= 1.5, f"systemd-analyze security rates the unit {exposure}"


@needs_analyze
def test_exposure_parsing_sees_a_weak_unit(tmp_path: Path, analyze_version: int) -> None:
    text = UNIT.read_text()
    weak = text[: text.index("# Sandbox:")] + "\n[Install]\nWantedBy=multi-user.target\n"
    assert _exposure(_fake_root(tmp_path, weak)) > 5.0


def _directives(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_unit_matches_what_the_daemon_does() -> None:
    d = _directives(UNIT.read_text())
    assert d["Type"] == ["notify"]
    assert d["NotifyAccess"] == ["main"]
    assert d["ExecStart"] == ["/usr/bin/datasetd run /etc/datasetd/%i.toml"]
    assert d["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert d["RestartPreventExitStatus"] == ["2"], "exit 2 (bad manifest, locked root) must not loop"

    def seconds(value: str) -> float:
        match = re.fullmatch(r"(\d+)s", value)
        assert match, f"write {value!r} in plain seconds, e.g. 45s"
        return float(match.group(1))

    assert seconds(d["TimeoutStopSec"][0]) > DaemonSettings().stop_timeout + 5
    assert seconds(d["WatchdogSec"][0]) >= 30
