"""Listing what is really in a folder: regular files by relative name, and anything else as a problem.

A listing also fingerprints every directory it walked (inode, mtime, ctime, taken just
before that directory was read). Adding, removing or renaming an entry changes its
directory's mtime and ctime, and ctime cannot be set from user space, so a unit whose
fingerprint still matches has the member set it had when it was listed: the no-op
apply checks one stat per directory instead of one per file.
"""

from __future__ import annotations

import json
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

# A directory changed less than this long before it was fingerprinted may change again within the
# same timestamp tick without its mtime moving ("racy git"): such a fingerprint is not kept. Linux
# stamps files from a clock that ticks every 1-10 ms; a second leaves room for coarser filesystems.
RACY_NS = 1_000_000_000
DirStamp = tuple[str, int, int, int]  # relative dir ("" for the folder), inode, mtime_ns, ctime_ns
FileStat = tuple[int, int, int]  # inode, size, ctime_ns


@dataclass
class Listing:
    files: dict[str, int] = field(default_factory=dict)  # relative name -> size
    problems: list[str] = field(default_factory=list)  # symlinks, devices, unreadable dirs
    dirs: list[DirStamp] = field(default_factory=list)  # each directory as it was just before it was read
    stats: dict[str, FileStat] = field(default_factory=dict)  # with `stats=True`: relative name -> FileStat

    def dir_names(self) -> set[str]:
        """Every directory below the folder, by relative name (the folder itself excluded)."""
        return {rel for rel, _ino, _m, _c in self.dirs if rel}

    def fingerprint(self) -> str | None:
        """The directories' stamps as stored in the journal, or None when one changed too recently."""
        if self.problems or not self.dirs:
            return None
        now = time.time_ns()
        if any(now - max(m, c) < RACY_NS for _, _, m, c in self.dirs):
            return None
        return dir_stamps_text(self.dirs)


def dir_stamps_text(stamps: list[DirStamp]) -> str:
    """The directory fingerprint as the journal keeps it (`unchanged_since` reads it)."""
    return json.dumps(sorted(stamps), separators=(",", ":"))


def list_files(folder: Path, sizes: bool = True, stats: bool = False) -> Listing:
    """Walk without following symlinks; a link or special file inside a unit is a problem.

    `sizes=False` records -1 for every file: the names and types come from the directory entries
    alone (one `getdents` per directory, no `stat` per file). `stats=True` also keeps each file's
    FileStat from the same `lstat` (state/filestats.py fingerprints a unit with it)."""
    out = Listing()
    stack = [("", str(folder))]
    while stack:
        prefix, path = stack.pop()
        try:
            st = os.lstat(path)  # before the read: a change after it moves mtime/ctime past the stamp
            out.dirs.append((prefix.rstrip("/"), st.st_ino, st.st_mtime_ns, st.st_ctime_ns))
            entries = list(os.scandir(path))
        except OSError as e:
            out.problems.append(f"{prefix or '.'}: cannot list ({e.strerror})")
            continue
        for entry in entries:
            rel = prefix + entry.name
            if entry.is_dir(follow_symlinks=False):
                stack.append((rel + "/", entry.path))
            elif entry.is_file(follow_symlinks=False):
                if stats:
                    st = entry.stat(follow_symlinks=False)
                    out.stats[rel] = (st.st_ino, st.st_size, st.st_ctime_ns)
                    out.files[rel] = st.st_size
                else:
                    out.files[rel] = entry.stat(follow_symlinks=False).st_size if sizes else -1
            else:
                out.problems.append(f"{rel}: not a regular file")
    return out


def unchanged_since(folder: Path, fingerprint: str) -> bool:
    """Whether every directory of a fingerprint is still the same directory, unmodified (one lstat each)."""
    try:
        stamps: list[list[object]] = json.loads(fingerprint)
    except ValueError:
        return False
    for rel, ino, mtime_ns, ctime_ns in stamps:
        try:
            st = os.lstat(folder / str(rel)) if rel else os.lstat(folder)
        except OSError:
            return False
        if not stat.S_ISDIR(st.st_mode) or (st.st_ino, st.st_mtime_ns, st.st_ctime_ns) != (ino, mtime_ns, ctime_ns):
            return False
    return True
