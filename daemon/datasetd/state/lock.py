"""One datasetd per data root: an flock(2) on the root directory itself.

Two daemons on one root would extract the same class twice and delete each
other's archives. The lock is taken on the root directory's own descriptor, not
on a file under `.datasetd/`: `rm -rf root/.datasetd` under a running daemon
cannot free it. "Is a daemon alive on this root" is answered by probing this
lock (`held_elsewhere`), never by a pid read from a file that may be stale,
hand-edited or recycled. flock is tied to the open file description, so:

* the kernel drops it when the last descriptor closes, including after
  SIGKILL or a power cut: there is no stale lock to clean up by hand;
* processes forked from the holder share it. Worker processes keep the root
  locked until they die, which is intended: while any of them may still write
  under root, a new daemon must not start there;
* the descriptor is close-on-exec, so programs the daemon execs (tar, ldconfig)
  do not hold it.

`.datasetd/lock` only says who holds the lock (pid and command line, for the
other side's message); losing it loses nothing but that message.
"""

from __future__ import annotations

import fcntl
import os
import shlex
import sys
import time
from pathlib import Path
from types import TracebackType

from datasetd.config.manifest import STATE_DIR
from datasetd.errors import UnsafePath, UsageError
from datasetd.state.safedir import check_own_dir

LOCK_NAME = "lock"
_MAX_COMMAND = 200


LOCK_GRACE = 2.0  # seconds


def _flock_with_grace(fd: int) -> None:
    """Take the lock, waiting up to LOCK_GRACE for a holder that is going away: after a SIGKILL the
    coordinator's forked workers keep the lock until PDEATHSIG has reached them, which on a busy
    machine can take longer than a user's immediate re-run. A live holder still refuses us."""
    deadline = time.monotonic() + LOCK_GRACE
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


def lock_path(root: Path) -> Path:
    return root / STATE_DIR / LOCK_NAME


def _this_command() -> str:
    argv = list(sys.argv) or ["datasetd"]
    argv[0] = os.path.basename(argv[0]) or "datasetd"
    return _one_line(shlex.join(argv))


def _one_line(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= _MAX_COMMAND else flat[: _MAX_COMMAND - 3] + "..."


def _describe_holder(path: Path) -> str:
    """'pid 1234, `datasetd run x.toml`' from what the holder wrote; best effort."""
    try:
        with open(path, "rb") as f:
            raw = f.read(4096).decode("utf-8", "replace")
    except OSError:
        raw = ""
    pid, _, command = raw.partition("\n")
    pid = pid.strip()
    if not pid.isdigit():
        # The holder locks before it writes, so a reader can land in between.
        return "pid unknown"
    command = _one_line(command)
    return f"pid {pid}, `{command}`" if command else f"pid {pid}"


def held_elsewhere(root: Path) -> bool:
    """Whether another open of `root` holds its lock: a datasetd (or a worker of one) is alive there.

    Probes with a shared lock, dropped at once; a root that does not exist is not held.
    """
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # closing drops the probe's own shared lock
    return False


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
            _flock_with_grace(fd)
        except BlockingIOError:
            os.close(fd)
            raise UsageError(
                f"{self.root}: another datasetd ({_describe_holder(self.path)}) holds the lock on this root; "
                "stop it first or use another root"
            ) from None
        except OSError as exc:
            os.close(fd)
            raise UsageError(f"{self.root}: cannot lock ({exc.strerror}); check the filesystem") from None
        self._fd = fd
        self._record_holder()

    def _open(self) -> int:
        try:
            check_own_dir(self.path.parent, make=True)
            # os.open descriptors are close-on-exec (PEP 446) but survive fork.
            return os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except UnsafePath as exc:
            if exc.what.startswith("a symlink"):
                raise UsageError(str(exc)) from None
            problem = exc.what
        except OSError as exc:
            problem = str(exc.strerror)
        raise UsageError(
            f"{self.path}: cannot create the lock file ({problem}); "
            "make root writable for this user (under systemd: ReadWritePaths=)"
        )

    def _record_holder(self) -> None:
        # Only for the other side's error message: no fsync, a crash loses nothing that matters.
        text = f"{os.getpid()}\n{_this_command()}\n".encode()
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            try:
                os.write(fd, text)
            finally:
                os.close(fd)
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
