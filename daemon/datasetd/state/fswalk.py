"""Listing what is really in a folder: regular files by relative name, and anything else as a problem."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Listing:
    files: dict[str, int] = field(default_factory=dict)  # relative name -> size
    problems: list[str] = field(default_factory=list)  # symlinks, devices, unreadable dirs


def list_files(folder: Path, sizes: bool = True) -> Listing:
    """Walk without following symlinks; a link or special file inside a unit is a problem.

    `sizes=False` records -1 for every file: the names and types come from the directory entries
    alone (one `getdents` per directory, no `stat` per file)."""
    out = Listing()
    stack = [("", str(folder))]
    while stack:
        prefix, path = stack.pop()
        try:
            entries = list(os.scandir(path))
        except OSError as e:
            out.problems.append(f"{prefix or '.'}: cannot list ({e.strerror})")
            continue
        for entry in entries:
            rel = prefix + entry.name
            if entry.is_dir(follow_symlinks=False):
                stack.append((rel + "/", entry.path))
            elif entry.is_file(follow_symlinks=False):
                out.files[rel] = entry.stat(follow_symlinks=False).st_size if sizes else -1
            else:
                out.problems.append(f"{rel}: not a regular file")
    return out
