"""One datasetd per root, proved with real processes holding a real flock and dying by SIGKILL."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from datasetd.errors import UsageError
from datasetd.state.lock import RootLock, lock_path

# argv[1] picks what the holder does once it has the lock. One line out, "locked [pid of its child]":
# a second line could sit in the pipe's read buffer where select() does not see it.
HOLDER = """
import os, subprocess, sys, time
from datasetd.state.lock import RootLock
lock = RootLock(sys.argv[3])
lock.acquire()
other = ""
if sys.argv[1] == "fork":
    child = os.fork()
    if child == 0:
        while True:
            time.sleep(60)
    other = str(child)
elif sys.argv[1] == "exec":
    # close_fds=False, like os.system or os.execv: only close-on-exec keeps the lock from the child.
    other = str(subprocess.Popen(["sleep", "120"], close_fds=False).pid)
print("locked", other, flush=True)
while True:
    time.sleep(60)
"""


TRY = """
import sys
from datasetd.errors import UsageError
from datasetd.state.lock import RootLock
try:
    with RootLock(sys.argv[1]):
        print("acquired")
except UsageError as e:
    print(e)
    sys.exit(e.exit_code)
"""


@pytest.fixture
def holder_script(tmp_path: Path) -> Path:
    path = tmp_path / "holder.py"
    path.write_text(HOLDER)
    return path


class Started:
    """What a test started, killed by id when it ends (even on failure), never by name."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []
        self.grandchildren: list[tuple[int, str]] = []  # (pid, word its cmdline must hold)

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        for pid, word in self.grandchildren:
            # Reaped by init, its pid could be someone else's by now: check before killing.
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if word.encode() in cmdline:
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def started() -> Iterator[Started]:
    s = Started()
    yield s
    s.cleanup()


def _read_line(proc: subprocess.Popen[str], timeout: float = 15.0) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, f"holder printed nothing in {timeout}s"
    line = proc.stdout.readline()
    assert line, f"holder exited early with {proc.wait()}"
    return line.strip()


def _start_holder(script: Path, mode: str, root: Path, started: Started) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, str(script), mode, "x.toml", str(root)],
        stdout=subprocess.PIPE, text=True,
    )
    started.procs.append(proc)
    word, _, other = _read_line(proc).partition(" ")
    assert word == "locked"
    if not other:
        return proc, 0
    started.grandchildren.append((int(other), "holder.py" if mode == "fork" else "sleep"))
    return proc, int(other)


def _try_lock(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", TRY, str(root)], capture_output=True, text=True, timeout=30)


def _kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=15) == -signal.SIGKILL


def _wait_free(root: Path, why: str, timeout: float = 15.0) -> None:
    """The killed process may be reparented and reaped by someone else: poll, bounded."""
    deadline = time.monotonic() + timeout
    while True:
        result = _try_lock(root)
        if result.returncode == 0:
            return
        assert time.monotonic() < deadline, f"{why}: lock still held after {timeout}s: {result.stdout}"
        time.sleep(0.1)


def test_second_process_is_refused_until_the_first_is_killed(tmp_path: Path, holder_script: Path,
                                                               started: Started) -> None:
    root = tmp_path / "data"
    holder, _ = _start_holder(holder_script, "plain", root, started)

    refused = _try_lock(root)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    message = refused.stdout.strip()
    assert "\n" not in message
    assert message.startswith(f"{root}: another datasetd (pid {holder.pid}, `holder.py plain x.toml {root}`)")
    assert message.endswith("stop it first or use another root")

    _kill(holder)
    again = _try_lock(root)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.strip() == "acquired"


def test_forked_workers_keep_the_root_locked_after_the_main_process_dies(
        tmp_path: Path, holder_script: Path, started: Started) -> None:
    root = tmp_path / "data"
    holder, worker = _start_holder(holder_script, "fork", root, started)

    _kill(holder)
    still = _try_lock(root)
    assert still.returncode == 2, "a forked worker that is still alive must keep the root locked"
    assert f"pid {holder.pid}," in still.stdout

    os.kill(worker, signal.SIGKILL)
    _wait_free(root, "after the worker was killed")


def test_programs_the_holder_execs_do_not_hold_the_lock(tmp_path: Path, holder_script: Path,
                                                        started: Started) -> None:
    root = tmp_path / "data"
    holder, sleeper = _start_holder(holder_script, "exec", root, started)

    _kill(holder)
    os.kill(sleeper, 0)  # still running, and yet:
    result = _try_lock(root)
    assert result.returncode == 0, "an exec'd child kept the lock: the descriptor is not close-on-exec"


def test_release_frees_the_lock_and_two_locks_in_one_process_conflict(tmp_path: Path) -> None:
    root = tmp_path / "data"
    with RootLock(root) as first:
        held_inside = first.held
        with pytest.raises(UsageError, match=rf"pid {os.getpid()},"):
            RootLock(root).acquire()
    assert held_inside
    assert not first.held
    with RootLock(root):
        pass
    # Kept: deleting it would let two daemons lock two different inodes.
    assert lock_path(root).exists()


def test_unwritable_root_is_a_usage_error(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    with pytest.raises(UsageError, match=r"cannot create the lock file .*ReadWritePaths=") as info:
        RootLock(not_a_dir).acquire()
    assert info.value.exit_code == 2
