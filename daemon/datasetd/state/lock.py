"""One datasetd per data root: an flock(2) on <root>/.datasetd/lock.

Two daemons on one root would extract the same class twice and delete each
other's archives. flock is tied to the open file description, so:

* the kernel drops it when the last descriptor closes, including after
  SIGKILL or a power cut: there is no stale lock to clean up by hand;
* processes forked from the holder share it. Worker processes keep the root
  locked until they die, which is intended: while any of them may still write
  under root, a new daemon must not start there;
* the descriptor is close-on-exec, so programs the daemon execs (tar, ldconfig)
  do not hold it.

The lock file is never deleted: unlinking it would let a second daemon lock a
fresh inode while the first still holds the old one.
"""

from __future__ import annotations

import fcntl
import os
import shlex
import sys
from pathlib import Path
from types import TracebackType

from datasetd.config.manifest import STATE_DIR
from datasetd.errors import UsageError

LOCK_NAME = "lock"
_MAX_COMMAND = 200


def lock_path(root: Path) -> Path:
    return root / STATE_DIR / LOCK_NAME


def _this_command() -> str:
    argv = list(sys.argv) or ["datasetd"]
    argv[0] = os.path.basename(argv[0]) or "datasetd"
    return _one_line(shlex.join(argv))


def _one_line(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= _MAX_COMMAND else flat[: _MAX_COMMAND - 3] + "..."


def _describe_holder(fd: int) -> str:
    """'pid 1234, `datasetd run x.toml`' from what the holder wrote; best effort."""
    try:
        raw = os.pread(fd, 4096, 0).decode("utf-8", "replace")
    except OSError:
        raw = ""
    pid, _, command = raw.partition("\n")
    pid = pid.strip()
    if not pid.isdigit():
        # The holder locks before it writes, so a reader can land in between.
        return "pid unknown"
    command = _one_line(command)
    return f"pid {pid}, `{command}`" if command else f"pid {pid}"


class RootLock:
    """Context manager holding the single-instance lock of one data root.

    Raises UsageError when another process holds it, or when the lock file
    cannot be created (read-only root, missing ReadWritePaths= under systemd).
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.path = lock_path(self.root)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        if self._fd is not None:
            return
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe_holder(fd)
            os.close(fd)
            raise UsageError(
                f"{self.root}: another datasetd ({holder}) holds the lock {self.path}; "
                "stop it first or use another root"
            ) from None
        except OSError as exc:
            os.close(fd)
            raise UsageError(f"{self.path}: cannot lock ({exc.strerror}); check the filesystem") from None
        self._fd = fd
        self._record_holder()

    def _open(self) -> int:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # os.open descriptors are close-on-exec (PEP 446) but survive fork.
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise UsageError(
                f"{self.path}: cannot create the lock file ({exc.strerror}); "
                "make root writable for this user (under systemd: ReadWritePaths=)"
            ) from None

    def _record_holder(self) -> None:
        # Only for the other side's error message: no fsync, a crash loses nothing that matters.
        assert self._fd is not None
        text = f"{os.getpid()}\n{_this_command()}\n".encode()
        try:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, text, 0)
        except OSError:
            pass  # a full disk must not stop the daemon from starting; the message says "pid unknown"

    def release(self) -> None:
        """Close our descriptor. No LOCK_UN: that would also unlock forked workers still holding it."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> RootLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
