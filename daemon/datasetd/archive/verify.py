"""Proving a unit: exact member set, sizes, and sha256 of the bytes read back from disk.

`verify_folder` runs in worker processes; `digest_list` renders the
`sha256sum -c` compatible list kept under <root>/.datasetd/sha256/.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from datasetd.archive import extract
from datasetd.core.model import CHUNK, FileRecord, Origin
from datasetd.state import filestats
from datasetd.state.fswalk import list_files

# What a delete re-proves: each dependent unit's name, folder, record and fingerprint blob (or None).
Dependent = tuple[str, Path, list[FileRecord], bytes | None]


@dataclass(frozen=True)
class Reproved:
    failed: list[tuple[str, list[str]]]  # each unit that no longer matches, with its problems
    rehashed: int  # units whose fingerprint did not prove them, so their bytes were read again
    fingerprinted: int  # units proved by their fingerprint alone, no byte read


def reprove_then_unlink(last_copy: Path, units: list[Dependent]) -> Reproved:
    """Unlink `last_copy` (a class tar or an archive) only if every folder that depends on it matches
    its record NOW; else keep it and report each failing unit with its problems.

    The record was proved once, but a folder can change after that (a same-size write with its
    mtime put back is invisible to names and sizes): the tar may be the last good copy. A unit whose
    fingerprint (inode, size, ctime of every file) still holds is proved by one stat per file; any
    other is re-hashed in full."""
    failed: list[tuple[str, list[str]]] = []
    rehashed = 0
    for unit, folder, records, blob in units:
        if records and filestats.unchanged(folder, records, blob):
            continue
        rehashed += 1
        problems = verify_folder(folder, records, blob) if records else [f"{folder}: no record to prove"]
        if problems:
            failed.append((unit, problems))
    if not failed:
        # If power loss undoes this unlink, the next run proves the folders again and deletes it again.
        last_copy.unlink()
    return Reproved(failed, rehashed, len(units) - rehashed)


Proof = tuple[list[str], bytes | None]  # a unit's problems, and the fingerprint of its files when none


def prove_folder(folder: Path, records: list[FileRecord]) -> Proof:
    """verify_folder of a unit just extracted, with the fingerprint of the files it proved (stat'ed
    before their bytes are read). Its directories are the ones extracted: none is extra."""
    taken = filestats.take(folder, records)
    problems = verify_folder(folder, records, taken)
    return problems, None if problems else taken


def reprove_folder(folder: Path, records: list[FileRecord], blob: bytes | None) -> Proof:
    """verify_folder of a recorded unit (deep verification), its directories checked against `blob`,
    with a fresh fingerprint when it is clean: a unit recorded without one (an older journal, a val
    tree moved by class) then lets its archive go on a stat per file too."""
    taken = filestats.take(folder, records)
    problems = verify_folder(folder, records, blob)
    return problems, None if problems else taken


def verify_folder(folder: Path, records: list[FileRecord], blob: bytes | None = None) -> list[str]:
    """Every problem found, one line each naming the file; empty means verified.

    `blob` (the unit's fingerprint) says which directories it had when verified; without one,
    those its files imply. Any other directory is reported like a file the archive did not have."""
    if folder.is_symlink() or not folder.is_dir():
        # A link in place of the folder points at files datasetd never wrote: never "clean".
        what = "a symlink" if folder.is_symlink() else "missing or not a directory"
        return [f"{folder}: {what}, not the folder datasetd extracted"]
    listing = list_files(folder)
    problems = [f"{folder}/{p}" for p in listing.problems]
    expected = {name: (size, digest) for name, size, digest in records}
    for name in sorted(set(listing.files) - set(expected)):
        problems.append(f"{folder}/{name}: not in the archive (unexpected file)")
    extra_dirs = listing.dir_names() - filestats.expected_dirs(expected, blob)
    for name in sorted(extra_dirs):
        if name.rpartition("/")[0] not in extra_dirs:  # one line for an extra tree: its top
            problems.append(f"{folder}/{name}: not in the archive (unexpected directory)")
    for name, (size, digest) in sorted(expected.items()):
        actual_size = listing.files.get(name)
        if actual_size is None:
            problems.append(f"{folder}/{name}: missing")
        elif actual_size != size:
            problems.append(f"{folder}/{name}: size {actual_size}, expected {size}")
        else:
            actual = file_sha256(folder / name)
            if actual != digest:
                problems.append(f"{folder}/{name}: sha256 {actual}, expected {digest}")
    return problems


def file_sha256(path: Path) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        h = hashlib.sha256()
        while chunk := os.read(fd, CHUNK):
            h.update(chunk)
        return h.hexdigest()
    finally:
        os.close(fd)


def digest_list(records: Iterable[FileRecord], prefix: str) -> str:
    """`sha256sum -c` format, names relative to the component directory (`into`)."""
    lines = []
    for name, _size, digest in sorted(records):
        path = f"{prefix}{name}"
        if "\\" in path or "\n" in path:
            # GNU coreutils escape format: a leading backslash marks an escaped name.
            path = path.replace("\\", "\\\\").replace("\n", "\\n")
            lines.append(f"\\{digest}  {path}\n")
        else:
            lines.append(f"{digest}  {path}\n")
    return "".join(lines)


# ---- a unit read back while extracted is verified there: fingerprint it right after ------------

# A unit's fingerprints taken right after its read-back: its files' (filestats blob) and its
# directories' stamps (what a no-op checks), each None where it would not vouch.
Taken = tuple[bytes | None, str | None]


def extract_fingerprinted(origin: Origin, folder: Path, partial: Path, old: Path,
                          expected_bytes: int) -> tuple[extract.Extracted, Taken]:
    """extract.extract_unit, then the fingerprints of what it read back. The stat follows the read-back
    by the rest of the unit's extraction: only a writer racing datasetd inside its own fresh folder
    in that moment could slip past it (any change after the stat is seen)."""
    result = extract.extract_unit(origin, folder, partial, old, expected_bytes)
    return result, _taken(folder, result)


def adopt_fingerprinted(origin: Origin, folder: Path, partial: Path, old: Path,
                        expected_bytes: int) -> tuple[tuple[bool, extract.Extracted], Taken]:
    adopted, result = extract.adopt_unit(origin, folder, partial, old, expected_bytes)
    return (adopted, result), _taken(folder, result)


def _taken(folder: Path, result: extract.Extracted) -> Taken:
    return filestats.take_with_dirs(folder, result.files) if result.read_back else (None, None)
