"""Every OS primitive datasetd needs that the standard library does not wrap (borg's platform module).

syncfs, early writeback, parent-death signal, I/O priority, read-ahead hints, the filesystem's
timestamp clock (and whether a filesystem stamps every change) and process probing live here, so
the rest of the package stays portable-looking and each primitive has one place that says what it
does when the kernel refuses.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform as _platform
import signal
import sys
import time
from pathlib import Path

_libc: ctypes.CDLL | None = None
_PR_SET_PDEATHSIG = 1
_IOPRIO_CLASS_BE, _IOPRIO_LOWEST, _IOPRIO_WHO_PROCESS = 2, 7, 1
# Linux's CLOCK_REALTIME_COARSE (Python 3.11 does not name it): the clock a filesystem stamps ctime from.
_CLOCK_COARSE: int | None = getattr(time, "CLOCK_REALTIME_COARSE", 5 if sys.platform == "linux" else None)
_UNKNOWN_TICK_NS = 20_000_000  # off Linux: assume stamps may lag the fine clock by this much
_SYS_IOPRIO_SET = {"x86_64": 251, "aarch64": 30, "i686": 289, "armv7l": 314, "ppc64le": 273, "s390x": 282,
                   "riscv64": 30}


def libc() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)  # libc is loaded; find_library would fork ldconfig
    return _libc


def syncfs(path: Path) -> None:
    """Flush every dirty page of the filesystem holding `path` with one call.

    Group commit: one flush costs ~100 ms here whatever it carries, so many
    extracted classes are made durable together, never one fsync per file.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc().syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(path))
    finally:
        os.close(fd)


def die_with_parent(parent: int | None = None) -> None:
    """PR_SET_PDEATHSIG: a worker dies with its coordinator, so a SIGKILLed apply cannot leave one
    writing into a .partial dir that the next run is about to clear. Best effort off Linux.

    `parent`: the pid that forked us. A coordinator killed between the fork and the prctl sends no
    signal (it is already gone), and the orphan would hold the root lock forever: exit instead."""
    with contextlib.suppress(Exception):
        libc().prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if parent is not None and os.getppid() != parent:
        os._exit(1)


def lowest_io_priority() -> None:
    """Best-effort I/O class at its lowest level (`ionice -c2 -n7`); a refusing kernel keeps normal priority."""
    number = _SYS_IOPRIO_SET.get(_platform.machine())
    if number is not None:
        value = (_IOPRIO_CLASS_BE << 13) | _IOPRIO_LOWEST
        with contextlib.suppress(Exception):
            libc().syscall(number, _IOPRIO_WHO_PROCESS, 0, value)


def nice_at_least(level: int) -> None:
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, max(level, os.getpriority(os.PRIO_PROCESS, 0)))


def sequential_hint(fd: int, offset: int = 0, length: int = 0) -> None:
    """Tell the kernel a file is read front to back (larger read-ahead); a no-op where unsupported."""
    with contextlib.suppress(OSError, AttributeError):
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_SEQUENTIAL)


def random_hint(fd: int) -> None:
    """Tell the kernel a file is read at scattered places (no read-ahead): a pass over tar headers
    then reads their pages only, not the member data between them; a no-op where unsupported."""
    with contextlib.suppress(OSError, AttributeError):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)


_SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Start writing a range's dirty pages to the device, without waiting (sync_file_range's
    SYNC_FILE_RANGE_WRITE). Not a durability step: only the fsync that follows is; this spreads its
    work over the time the range was being filled, so that fsync finds little left. A no-op where
    unsupported."""
    with contextlib.suppress(OSError, AttributeError):
        fn = libc().sync_file_range
        fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
        fn(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


def stamp_clock_ns() -> int:
    """Now, on the clock the kernel stamps file times from (`current_time()`: the coarse realtime
    clock, one tick behind the fine one at most). A file changed after this reading gets a ctime at
    or past it. Off Linux, the fine clock less a margin that stands for the unknown tick."""
    if _CLOCK_COARSE is not None:
        with contextlib.suppress(OSError):
            return time.clock_gettime_ns(_CLOCK_COARSE)
    return time.time_ns() - _UNKNOWN_TICK_NS


def stamp_tick_ns() -> int:
    """How far the stamp clock moves at a time (one jiffy: 4 ms at HZ=250)."""
    if _CLOCK_COARSE is not None:
        with contextlib.suppress(OSError):
            return max(1, int(time.clock_getres(_CLOCK_COARSE) * 1e9))
    return _UNKNOWN_TICK_NS


# Filesystems seen to stamp every change after a stat, by device, in this process (stamps_every_change).
_EVERY_CHANGE_STAMPED: dict[int, bool] = {}
_PROBE_HITS = 5  # same-tick changes that must each show, with none hidden, to trust a filesystem
_PROBE_TRIES = 50


def stamps_every_change(scratch: Path) -> bool:
    """Whether the filesystem holding `scratch` gives a file or directory new stamps on every change
    made after a stat read them, even within one tick of the stamp clock: Linux's multigrain
    timestamps (6.13 and later, on ext4, xfs, btrfs and tmpfs). There a fingerprint's stat is final
    at once: no later change can keep the ctime it recorded, so nothing waits for the clock to tick.

    Probed once per filesystem and process by a change made in the same tick as the stat before it,
    to a file and to a directory that are made and removed inside `scratch` (a directory of
    datasetd's own, such as a unit's .partial one, which the next run clears if a crash leaves
    them). A change that kept its stamp, a probe that cannot run, or no coarse clock: False."""
    try:
        device = os.stat(scratch).st_dev
    except OSError:
        return False
    if device not in _EVERY_CHANGE_STAMPED:
        _EVERY_CHANGE_STAMPED[device] = _probe_stamps(scratch)
    return _EVERY_CHANGE_STAMPED[device]


def stamps_every_change_known(path: Path) -> bool:
    """stamps_every_change's verdict for `path`'s filesystem if this process has probed it, else False."""
    try:
        return _EVERY_CHANGE_STAMPED.get(os.stat(path).st_dev, False)
    except OSError:
        return False


def _probe_stamps(scratch: Path) -> bool:
    if _CLOCK_COARSE is None:
        return False
    probe = scratch / f".stamp-probe-{os.getpid()}"
    try:
        os.mkdir(probe)
        fd = os.open(probe / "f", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError:
        with contextlib.suppress(OSError):
            os.rmdir(probe)
        return False
    try:
        return _same_tick_changes_show(fd, probe)
    except OSError:
        return False
    finally:
        os.close(fd)
        # No fsync: a crash leaves the probe in a folder the next run clears. Each removal on its
        # own: a probe cut short between its mkdir and rmdir of "d" must not stay behind either.
        for remove, path in ((os.unlink, probe / "f"), (os.rmdir, probe / "d"), (os.rmdir, probe)):
            with contextlib.suppress(OSError):
                remove(path)


def _same_tick_changes_show(fd: int, probe: Path) -> bool:
    """Changes whose stat and change fall in one tick of the stamp clock: each must move the stamp."""
    assert _CLOCK_COARSE is not None
    hits = 0
    for _ in range(_PROBE_TRIES):
        tick = time.clock_gettime_ns(_CLOCK_COARSE)
        before_file = os.fstat(fd).st_ctime_ns
        os.write(fd, b"x")
        after_file = os.fstat(fd).st_ctime_ns
        before_dir = os.lstat(probe).st_mtime_ns
        os.mkdir(probe / "d")
        after_dir = os.lstat(probe).st_mtime_ns
        os.rmdir(probe / "d")
        if time.clock_gettime_ns(_CLOCK_COARSE) != tick:
            continue  # the clock ticked meanwhile: a moved stamp would prove nothing
        if before_file == after_file or before_dir == after_dir:
            return False
        hits += 1
        if hits == _PROBE_HITS:
            return True
    return False


def pid_alive(pid: object) -> bool:
    """Whether a process with this pid exists (signal 0). Only positive pids: 0 and -1 name groups."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0 or pid > 2**22:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OverflowError:
        return False
    return True
