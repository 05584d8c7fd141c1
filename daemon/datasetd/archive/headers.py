"""Count an uncompressed tar's members from its headers alone, for `datasetd plan` before any index pass.

Sits before the plan: an archive already on disk but not yet indexed would
otherwise have unknown inodes. tarfile seeks past each member's data on a
seekable file, so a 148 GB train tar costs one 512-byte read per member
(1,000 class tars, then the headers inside each), never a read of the images.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

from datasetd.core.model import TarCount


def count_members(path: Path, nested: bool) -> TarCount | None:
    """Files, directories and file bytes that extraction will create; None if compressed or unreadable.

    `nested`: a tar of class tars (`unpack = "class-tars"`): count inside each `*.tar` member, plus one
    directory per class.
    """
    try:
        with tarfile.open(path, mode="r:") as outer:
            if not nested:
                return _tally(outer)
            files = dirs = size = 0
            for member in outer:
                if not (member.isfile() and member.name.endswith(".tar")):
                    continue
                inner_file = outer.extractfile(member)
                if inner_file is None:
                    continue
                with tarfile.open(fileobj=inner_file, mode="r:") as inner:
                    t = _tally(inner)
                files, dirs, size = files + t.files, dirs + t.dirs + 1, size + t.bytes
            return TarCount(files=files, dirs=dirs, bytes=size)
    except (OSError, tarfile.TarError):
        return None  # compressed (needs a full read) or damaged: the index pass will say which


def _tally(tf: tarfile.TarFile) -> TarCount:
    files = dirs = size = 0
    for m in tf:
        if m.isfile():
            files, size = files + 1, size + m.size
        elif m.isdir():
            dirs += 1
    return TarCount(files=files, dirs=dirs, bytes=size)
