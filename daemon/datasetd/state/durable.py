"""The one way to make state durable (the model is borg's SaveFile).

A crash can happen between any two system calls, and a power loss can drop
anything not yet flushed. Each helper here says which of those it survives.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries: makes a finished rename/create/unlink in it survive power loss."""
    _fsync(path, os.O_DIRECTORY)


def fsync_file(path: Path) -> None:
    """Flush a file another writer made through the page cache (libtorrent never flushes): its bytes
    and size then survive power loss. Its name needs `fsync_dir` of its directory besides."""
    _fsync(path, 0)


def _fsync(path: Path, kind: int) -> None:
    fd = os.open(path, os.O_RDONLY | kind | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def save_file(path: Path, mode: str = "w") -> Iterator[IO[str]]:
    """Write `path` atomically: readers see the old or the new file, never a mix.

    Temp file in the same directory (rename is atomic only within a filesystem),
    removed if the body raises; fsync before rename so a power loss cannot leave
    the new name pointing at empty data; fsync the directory so the rename itself
    survives power loss.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # surrogateescape: digest lists name non-UTF-8 files by their exact bytes, as sha256sum reads them
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8",
                       errors=None if "b" in mode else "surrogateescape") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def write_text_atomic(path: Path, text: str) -> None:
    with save_file(path) as f:
        f.write(text)


def write_text_fast(path: Path, text: str, mode: int | None = None, group_of: Path | None = None) -> None:
    """Atomic replace without flushing: survives a process crash (readers never see a
    torn file) but not power loss. For status.json, rewritten every second; a lost
    update after power loss is rewritten on the next start.

    `mode` replaces mkstemp's 0600 and `group_of` lends that path's group, set on the
    temp file before the rename so readers never see the file with other rights."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if group_of is not None:
            share_with_group(fd, group_of)
        if mode is not None:
            os.fchmod(fd, mode)
        # surrogateescape: a digest list names non-UTF-8 files by their exact bytes, as sha256sum reads them
        with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def share_with_group(fd: int, group_of: Path) -> None:
    """Give an open file the group of `group_of` (the data root), so the root's group can read it.

    Only the owner or root may change a group; where that is refused the file keeps the
    process's group, which is still right for the usual setup (one service user and group)."""
    try:
        gid = os.stat(group_of).st_gid
        if os.fstat(fd).st_gid != gid:
            os.fchown(fd, -1, gid)
    except (PermissionError, FileNotFoundError):
        pass
