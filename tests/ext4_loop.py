"""ext4 on a loop device for the power-cut test (test_power_cut.py): a disk whose copies are power cuts.

The kernel is told to write back nothing on its own (`flusher_off`) and ext4 commits its
journal only every 600 s, so what reaches the loop device is what a process asked to be
durable (fsync, fdatasync, syncfs) plus whatever the journal commit those calls force
carries along. The device's backing file holds exactly the writes the loop driver was
given, so a copy of it taken while nothing is in flight is the disk as a power cut at that
moment would leave it. Everything set up here is undone on the way out, failure or not:
no mount, no loop device and no changed sysctl is left behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

TOOLS = ("losetup", "mkfs.ext4", "e2fsck", "mount", "umount")
VM = Path("/proc/sys/vm")
# dirty_writeback_centisecs = 0 disables the periodic flusher altogether (Documentation/admin-guide/
# sysctl/vm.rst); the expiry is raised too (1 h), so pages dirtied during the run never count as old.
NO_FLUSHER = {"dirty_writeback_centisecs": "0", "dirty_expire_centisecs": "360000"}
KERNEL_DEFAULTS = {"dirty_writeback_centisecs": "500", "dirty_expire_centisecs": "3000"}
LOCK = Path(tempfile.gettempdir()) / "datasetd-tests-vm-flusher.lock"  # machine-wide on purpose; holds no data


def power_cut_marks() -> list[pytest.MarkDecorator]:
    """A power-cut test's marks: slow (`make test-faults`), and skipped where this cannot run."""
    return [
        pytest.mark.slow,
        pytest.mark.skipif(os.geteuid() != 0, reason="losetup, mount and vm sysctls need root (CI runs as root)"),
        pytest.mark.skipif(bool(missing_tools()),
                           reason=f"needs {', '.join(missing_tools())} (Debian: e2fsprogs, mount)"),
        pytest.mark.skipif(not Path("/dev/loop-control").exists(), reason="this kernel has no loop devices"),
    ]


def missing_tools() -> list[str]:
    return [t for t in TOOLS if shutil.which(t) is None]


def run(*cmd: str) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)}: exit {done.returncode}: {done.stderr.strip() or done.stdout}")
    return done.stdout.strip()


@contextlib.contextmanager
def flusher_off() -> Iterator[None]:
    """The sysctls are machine-wide: two runs at once (two worktrees on one machine) would each save
    the other's raised values and one would restore those. A lock on a machine-wide file serializes
    them; values still raised when it is taken are a killed run's leftover, and the kernel's
    defaults are put back instead."""
    with LOCK.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        saved = {name: (VM / name).read_text().strip() for name in NO_FLUSHER}
        if saved == NO_FLUSHER:
            saved = KERNEL_DEFAULTS
        try:
            for name, value in NO_FLUSHER.items():
                (VM / name).write_text(value)
            yield
        finally:
            for name, value in saved.items():
                (VM / name).write_text(value)


def make_image(path: Path, size_mib: int = 256) -> None:
    """A sparse image with ext4 made in full now: no lazy inode-table or journal zeroing
    (ext4lazyinit) writes to the device behind the test's back once it is mounted."""
    with path.open("wb") as f:
        f.truncate(size_mib << 20)
    run("mkfs.ext4", "-q", "-F", "-b", "4096", "-E", "lazy_itable_init=0,lazy_journal_init=0", str(path))


@contextlib.contextmanager
def attached(image: Path) -> Iterator[str]:
    dev = run("losetup", "--find", "--show", str(image))
    try:
        yield dev
    finally:
        run("losetup", "-d", dev)


@contextlib.contextmanager
def mounted(image: Path, at: Path, options: str = "") -> Iterator[str]:
    """`image` on a loop device, mounted as ext4 at `at`; yields the device."""
    at.mkdir(parents=True, exist_ok=True)
    with attached(image) as dev:
        run("mount", "-t", "ext4", *(["-o", options] if options else []), dev, str(at))
        try:
            yield dev
        finally:
            if subprocess.run(["umount", str(at)], capture_output=True).returncode != 0:
                # Something still holds a file there (a test failed mid-read): detach it anyway, so
                # no mount is left behind; the loop device is then freed when the last file closes.
                run("umount", "--lazy", str(at))


def settle(dev: str, timeout: float = 30.0) -> None:
    """Wait until no request to the device is in flight, so a copy is one moment, not a torn one."""
    inflight = Path("/sys/block") / Path(dev).name / "inflight"
    deadline = time.monotonic() + timeout
    while inflight.read_text().split() != ["0", "0"]:
        assert time.monotonic() < deadline, f"{dev}: requests still in flight after {timeout} s"
        time.sleep(0.005)


def copy_device(image: Path, dest: Path) -> Path:
    """What reached the device: the backing file (sparse, so a copy costs only the bytes written)."""
    run("cp", "--sparse=always", str(image), str(dest))
    return dest


def fsck(image: Path) -> tuple[int, list[str]]:
    """`e2fsck -f -p` (replays the journal, then a full check): 0 clean, 1 fixed; anything else fails.
    Also returns what it said beyond replaying the journal and its summary line (what it fixed)."""
    done = subprocess.run(["e2fsck", "-f", "-p", str(image)], capture_output=True, text=True)
    assert done.returncode in (0, 1), \
        f"{image.name}: e2fsck exit {done.returncode}:\n{done.stdout}{done.stderr}"
    said = [line for line in (done.stdout + done.stderr).splitlines()
            if line.strip() and not line.endswith(": recovering journal") and " files (" not in line]
    return done.returncode, said


# ---- freezing a process group: every task stopped before a copy --------------------------------


def group_tasks(pgid: int) -> list[Path]:
    """Every thread of every process in the group (their /proc/PID/task/TID directories)."""
    tasks = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:
                tasks.extend((proc / "task").iterdir())
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue  # gone meanwhile
    return tasks


def _state(task: Path) -> str:
    try:
        return (task / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return "X"


def wait_stopped(pgid: int, timeout: float = 30.0) -> None:
    """SIGSTOP takes effect on the way back to user space: a thread inside fsync or syncfs stops
    only once the flush is done. Wait for every thread, so no flush is half done in the copy."""
    deadline = time.monotonic() + timeout
    while any(_state(t) not in "tTZX" for t in group_tasks(pgid)):
        assert time.monotonic() < deadline, f"process group {pgid} did not stop within {timeout} s"
        time.sleep(0.002)
