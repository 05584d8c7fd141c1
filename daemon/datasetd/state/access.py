"""Who may read the state directory: the data root's group (systemd/README.md, "Reading status").

Called by every writer (apply, verify, the daemon) when it opens the journal. status.json gets
the same rights from the StatusBoard as it writes it.
"""

from __future__ import annotations

import os
from pathlib import Path

DIR_MODE = 0o750
FILE_MODE = 0o640


def share_state(state_dir: Path, root: Path) -> None:
    """state_dir 0750 and its journal files 0640, all in root's group. SQLite gives the -wal
    and -shm files it creates later the journal's own mode."""
    state_dir.mkdir(parents=True, exist_ok=True)
    _share(state_dir, root, DIR_MODE)
    for path in state_dir.glob("journal.sqlite*"):
        _share(path, root, FILE_MODE)


def _share(path: Path, root: Path, mode: int) -> None:
    try:
        st = path.stat()
        gid = root.stat().st_gid
        if st.st_gid != gid:
            os.chown(path, -1, gid, follow_symlinks=False)
        if st.st_mode & 0o777 != mode:
            os.chmod(path, mode, follow_symlinks=False)
    except (PermissionError, FileNotFoundError):
        pass  # not ours to change (another owner): it keeps the rights it has
