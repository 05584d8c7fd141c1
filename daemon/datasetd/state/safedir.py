"""Datasetd's own directories are real directories: resolve, don't compare strings.

Every directory datasetd writes in (root's `.datasetd/`, each `into`, the
digest-list folders) is checked component by component with lstat before it is
used, and again after it is created: a symlink (or a file) where datasetd
expects its own directory would send writes, renames and deletes outside root.
`root` itself is resolved once when the manifest is loaded, so every path
below it must already be its own real path. Used by the journal, the lock,
observation (every pass) and the extractor in the worker processes.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from datasetd.errors import UnsafePath


def check_own_dir(path: Path, make: bool = False) -> Path:
    """Raise UnsafePath if any existing component of `path` is a symlink or not a directory.

    With `make`, missing components are created (mkdir -p) and the whole path is checked again
    afterwards, so a link swapped in while it was being made is still refused before any write.
    """
    _check(path)
    if make:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            pass  # a file raced in: the re-check names it
        _check(path)
    return path


def _check(path: Path) -> None:
    current = Path(path.anchor or "/")
    for part in path.parts[1:]:
        current = current / part
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            return  # the rest does not exist yet: nothing below can be a link
        except NotADirectoryError:
            raise UnsafePath(str(current.parent), "not a directory") from None
        if stat.S_ISLNK(st.st_mode):
            raise UnsafePath(str(current), f"a symlink (to {os.readlink(current)})")
        if not stat.S_ISDIR(st.st_mode):
            raise UnsafePath(str(current), "not a directory")
