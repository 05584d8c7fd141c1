"""Every error datasetd raises, in one hierarchy (the model is httpx/_exceptions.py).

    DatasetdError
    ├── ManifestError        the manifest is invalid: exit 2, nothing on disk touched
    ├── UsageError           bad command line or environment (e.g. root locked): exit 2
    ├── PermanentError       needs the user: a retry cannot help
    │   ├── DigestMismatch   bytes on disk differ from what the manifest or journal pins
    │   ├── HostileArchive   a tar member that could escape, or is not a plain file
    │   ├── CorruptArchive   a truncated or unreadable tar
    │   ├── UnsafePath       a symlink or file where datasetd expects its own directory
    │   ├── NoSpace          the filesystem cannot hold what the plan needs
    │   ├── JournalDamaged   a journal page read mid-run is damaged: moved aside, rebuilt from the archives
    │   ├── BadDevkit        a devkit or label file that does not parse (names file and line)
    │   └── ExpectationFailed  counts on disk differ from the manifest's `expect`
    ├── TemporaryError       may succeed later; carries the delay before the next try
    └── TransferError        one HTTP attempt's outcome, handled inside the HTTP source (never leaves it)
        ├── Retryable        another attempt (maybe at a mirror) may succeed
        ├── Restart          the bytes held cannot be continued: start from zero
        ├── Refused          the server refused for good (401, 404...): next mirror, or the PermanentError
        ├── Aborted          the supervisor cut the connection (stop, stall, a sibling failed)
        └── SizeConflict     the server announced another length than the pinned size

The executor is the only place that decides between retrying and failing.
Every message is one line that names the file, key or member and what to do.
"""

from __future__ import annotations

import errno
import os


class DatasetdError(Exception):
    """Base of every error datasetd raises on purpose."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[object, ...]:
        # Subclasses take other constructor arguments; rebuild from state so errors
        # raised in worker processes cross the process boundary intact.
        return (_rebuild, (type(self), self.args, self.__dict__))


class ManifestError(DatasetdError):
    """The manifest cannot be used. `key` is a dotted path such as components.train.sha256."""

    exit_code = 2

    def __init__(self, file: str, key: str, problem: str, fix: str = "") -> None:
        self.file = file
        self.key = key
        self.problem = problem
        self.fix = fix
        where = f"{file}: {key}: " if key else f"{file}: "
        super().__init__(where + problem + (f" ({fix})" if fix else ""))


class UsageError(DatasetdError):
    exit_code = 2


class PermanentError(DatasetdError):
    """Needs the user; the component stays in error until the manifest or the disk changes."""


class DigestMismatch(PermanentError):
    def __init__(self, path: str, algo: str, expected: str, actual: str, hint: str = "") -> None:
        self.path = path
        self.algo = algo
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"{path}: {algo} is {actual}, expected {expected}"
            + (f"; {hint}" if hint else "")
        )


class HostileArchive(PermanentError):
    def __init__(self, archive: str, member: str, reason: str) -> None:
        self.archive = archive
        self.member = member
        self.reason = reason
        super().__init__(
            f"{archive}: member {_shown(member)} refused: {reason}; "
            "nothing was written outside the target, remove or replace the archive"
        )


class CorruptArchive(PermanentError):
    def __init__(self, archive: str, detail: str) -> None:
        self.archive = archive
        super().__init__(f"{archive}: {detail}; fetch the archive again or check its source")


class UnsafePath(PermanentError):
    def __init__(self, path: str, what: str) -> None:
        self.path = path
        self.what = what
        super().__init__(
            f"{path}: {what} where datasetd expects its own directory; nothing was written through it: "
            "replace it with a real directory (or remove it) and run again"
        )


class NoSpace(PermanentError):
    def __init__(self, filesystem: str, need: int, free: int, what: str = "bytes") -> None:
        self.filesystem = filesystem
        self.need = need
        self.free = free
        super().__init__(
            f"{filesystem}: needs {_human(need, what)} more {what} than are free "
            f"({_human(free, what)} free); free space there or move root"
        )


class JournalDamaged(PermanentError):
    """Met while reading or writing, past the check at open; the journal is moved aside when closed."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: the journal is damaged ({problem}); the next apply moves it aside and "
                         "rebuilds it by re-proving the tree against its archives: verified data is kept")


class BadDevkit(PermanentError):
    def __init__(self, path: str, problem: str, line: int | None = None) -> None:
        self.path = path
        self.line = line
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {problem}; replace the devkit or label file with the published one")


class ExpectationFailed(PermanentError):
    def __init__(self, component: str, problems: list[str]) -> None:
        self.component = component
        self.problems = problems
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        super().__init__(f"components.{component}.expect not met: {shown}")


class TemporaryError(DatasetdError):
    """Retry after `delay` seconds (network errors, busy servers, a stalled swarm)."""

    def __init__(self, message: str, delay: float = 30.0) -> None:
        super().__init__(message)
        self.delay = delay


# The one table from an OS error to what the user should do; ENOSPC and EDQUOT are one case everywhere.
_ERRNO_FIX: dict[int, str] = {
    errno.ENOSPC: "no space left on its filesystem ({strerror}); free space there and run again: verified data is kept",
    errno.EDQUOT: "disk quota exceeded ({strerror}); free space there and run again: verified data is kept",
    errno.EACCES: "{strerror}; give datasetd write access or fix the path",
    errno.EPERM: "{strerror}; give datasetd write access or fix the path",
    errno.EROFS: "{strerror}; give datasetd write access or fix the path",
    errno.ENAMETOOLONG: "{strerror}; choose a shorter path in the manifest",
}


def is_out_of_space(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def from_os_error(exc: OSError, where: str) -> PermanentError:
    """An OSError as a one-line PermanentError naming the path (or `where`) and the fix."""
    place = exc.filename or where
    strerror = exc.strerror or (os.strerror(exc.errno) if exc.errno else str(exc))
    fix = _ERRNO_FIX.get(exc.errno or 0, "{strerror}")
    return PermanentError(f"{place}: {fix.format(strerror=strerror)}")


def classify(exc: BaseException, component: str, step: str) -> DatasetdError:
    """The only place that turns an arbitrary failure into Permanent or Temporary."""
    if isinstance(exc, DatasetdError):
        return exc
    if isinstance(exc, OSError):
        return from_os_error(exc, f"components.{component}")
    if type(exc).__name__ == "BrokenProcessPool":  # concurrent.futures, without importing it here
        return PermanentError(f"components.{component}: a worker process died ({exc}); "
                              "check memory limits and the kernel log")
    return PermanentError(f"components.{component}: internal error in {step}: {exc!r}")


class TransferError(DatasetdError):
    """What one HTTP attempt ended with; sources.http.fetcher decides what comes next."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Retryable(TransferError):
    def __init__(self, reason: str, delay: float | None = None) -> None:
        super().__init__(reason)
        self.delay = delay  # from Retry-After, seconds; None: use backoff


class Restart(TransferError):
    def __init__(self, reason: str, single: bool = False) -> None:
        super().__init__(reason)
        self.single = single  # the server ignores Range: do not try segments again


class Refused(TransferError):
    def __init__(self, error: PermanentError) -> None:
        super().__init__(error.message)
        self.error = error


class Aborted(TransferError):
    pass


class SizeConflict(TransferError):
    def __init__(self, expected: int, actual: int) -> None:
        super().__init__(f"size {actual}, expected {expected}")
        self.expected = expected
        self.actual = actual


def _shown(name: str, limit: int = 200) -> str:
    """A member name as messages show it: quoted, escaped, and cut short when a header made it huge."""
    text = repr(name)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(name)} characters)"


def _rebuild(cls: type[DatasetdError], args: tuple[object, ...], state: dict[str, object]) -> DatasetdError:
    err = cls.__new__(cls)
    Exception.__init__(err, *args)
    err.__dict__.update(state)
    return err


def _human(n: int, what: str) -> str:
    if what != "bytes":
        return f"{n:,}"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{n} B"
        value /= 1024
    return f"{n} B"  # pragma: no cover
