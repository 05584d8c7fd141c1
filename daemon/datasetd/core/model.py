"""Plain data shared by observe, planning and executing: what was seen, what to do.

A *unit* is what one extraction produces and one verification proves: a class
folder `into/W/` for class-tars, or the whole `into/` for a flat tar (unit
name FLAT). Nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import ClassVar, Literal

from datasetd.config.manifest import Component

FLAT = "."  # unit name of a flat tar: the unit is `into` itself
CHUNK = 1 << 20  # bytes per read wherever datasetd reads a file through (hashing, copying)
FileRecord = tuple[str, int, str]  # one extracted file: name relative to its unit, size, sha256
# What the journal keys an archive's units by while the archive's digest has not yet been checked
# against its pin (its index is in, its hash runs alongside the extraction): a key no real sha256
# can equal, so nothing recorded under it is ever taken for a unit of the pinned archive.
UNPROVEN = "unproven:"


def unproven(archive_sha256: str) -> bool:
    return archive_sha256.startswith(UNPROVEN)


class Journal(StrEnum):
    """What the journal knows about a unit, for the archive it currently indexes."""

    NONE = "none"
    EXTRACTED = "extracted"  # member names, sizes and sha256 recorded at extraction
    VERIFIED = "verified"  # re-read from disk, matched, and flushed (syncfs) before recording


@dataclass(frozen=True)
class UnitIndex:
    """One unit's bytes inside the archive, as found by the index pass."""

    name: str
    offset: int  # where the unit's tar starts inside the archive (0 for FLAT)
    size: int  # bytes of the unit's tar (the whole archive for FLAT)
    sha256: str  # of those bytes
    files: int  # regular files inside
    dirs: int
    bytes: int  # sum of file sizes
    problem: str | None = None  # hostile or broken member found while indexing


@dataclass(frozen=True)
class TarCount:
    """What extracting an archive creates, counted from tar headers before any index pass."""

    files: int
    dirs: int
    bytes: int


@dataclass(frozen=True)
class UnitState:
    index: UnitIndex
    loose_tar: str | None = None  # "W.tar" or "Z_W.tar" found in `into` (hand-split or earlier run)
    loose_tar_ok: bool = False  # its size equals the indexed size
    folder: bool = False
    journal: Journal = Journal.NONE
    intact: bool = False  # folder's names and sizes equal the journal's record
    arranged: bool = False  # a flat tree's records are `<wnid>/<name>`: its files were moved by class
    arranging: bool = False  # a move plan is on disk: an arrangement started and was not recorded
    # a fresh fingerprint of the folder's directories, from a listing that found it intact, when the
    # journal's is missing or stale: the executor records it so the next observation is one stat a dir
    dirs_seen: str | None = None

    @property
    def name(self) -> str:
        return self.index.name


@dataclass(frozen=True)
class ArchiveState:
    present: bool
    size: int | None = None
    verified: bool = False  # journal holds digests for exactly this file (size, mtime, inode)
    indexed: bool = False
    # False while the index is recorded but the digest is not yet checked against the pin: units
    # with nothing on disk may be extracted meanwhile, none is committed verified before the verdict
    proven: bool = True


@dataclass(frozen=True)
class ComponentState:
    archive: ArchiveState
    units: tuple[UnitState, ...] = ()
    archive_sha256: str | None = None  # from the journal, when verified
    # Free inodes where the units go, looked up while the archive is not yet proved: the full index
    # has not counted its members, so what may start meanwhile is bounded by this (planning).
    inodes_free: int | None = None


@dataclass(frozen=True)
class Observed:
    components: dict[str, ComponentState] = field(default_factory=dict)


# ---- actions -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Origin:
    """Where a unit's tar bytes are: a loose class tar, or a byte range of the archive."""

    path: Path
    offset: int
    size: int
    sha256: str
    loose: bool


Phase = Literal["fetching", "unpacking", "verifying"]
# a worker process (CPU), a process of its own (one long pass beside the workers), a fetch thread,
# or the executor itself
RunsIn = Literal["worker", "process", "thread", "inline"]


@dataclass(frozen=True)
class Action:
    """One step the planner decided. Each concrete type says, as class data, what the reactor and the
    figures need to know of it: the phase it shows and where it runs; `engine.steps.STEPS` says how."""

    phase: ClassVar[Phase | None] = "unpacking"
    runs_in: ClassVar[RunsIn] = "inline"
    component: str

    def traffic(self, comp: Component, state: ComponentState) -> tuple[int, int]:
        """Bytes this step reads and writes (for `datasetd plan`); renames and deletes move none."""
        return (0, 0)

    @property
    def key(self) -> tuple[str, str]:
        return (self.component, "")

    @property
    def kind(self) -> str:
        return type(self).__name__


@dataclass(frozen=True)
class Fetch(Action):
    """Download the archive (http, torrent) to component.archive."""

    phase: ClassVar[Phase | None] = "fetching"
    runs_in: ClassVar[RunsIn] = "thread"

    def traffic(self, comp: Component, state: ComponentState) -> tuple[int, int]:
        return (0, comp.size or 0)


@dataclass(frozen=True)
class IndexArchive(Action):
    """Hash the archive, check it against the manifest, list its units and members."""

    runs_in: ClassVar[RunsIn] = "worker"
    path: Path

    def traffic(self, comp: Component, state: ComponentState) -> tuple[int, int]:
        return (state.archive.size or comp.size or 0, 0)


@dataclass(frozen=True)
class ProveArchive(Action):
    """Hash an archive whose index is already recorded and check the digest against its pin, while
    units are extracted from it; its verdict gates every commit of those units as verified."""

    # Not a thread of the executor: its header parse held the GIL between the executor's own
    # syscalls (a stat, a journal write), each then waiting up to a switch interval to go on.
    runs_in: ClassVar[RunsIn] = "process"
    path: Path

    def traffic(self, comp: Component, state: ComponentState) -> tuple[int, int]:
        return (state.archive.size or comp.size or 0, 0)


@dataclass(frozen=True)
class UnitAction(Action):
    unit: str

    @property
    def key(self) -> tuple[str, str]:
        return (self.component, self.unit)


@dataclass(frozen=True)
class _FromTar(UnitAction):
    """A step that reads the unit's tar and may (re)build its folder."""

    runs_in: ClassVar[RunsIn] = "worker"
    origin: Origin
    folder: Path
    partial: Path
    old: Path  # where a folder that failed its check waits while its replacement is renamed in
    expected_bytes: int  # the index's count of the unit's file bytes: no member may claim more


@dataclass(frozen=True)
class ExtractUnit(_FromTar):
    """Extract into the partial dir, hashing while writing, then rename into place."""

    replace: bool  # an existing folder that failed its check is swapped out

    def traffic(self, comp: Component, state: ComponentState) -> tuple[int, int]:
        return (self.origin.size, self.expected_bytes)


@dataclass(frozen=True)
class AdoptUnit(_FromTar):
    """A folder with no record (hand-made, or a crash before recording): compare it with its tar."""

    def traffic(self, comp: Component, state: ComponentState) -> tuple[int, int]:
        return (self.origin.size, 0)


@dataclass(frozen=True)
class MarkProcessed(UnitAction):
    """Rename W.tar to Z_W.tar once W/ is recorded (the manual recipe's marker, kept)."""

    tar: Path
    marked: Path


@dataclass(frozen=True)
class ArrangeByClass(UnitAction):
    """Rename a verified flat tree's files into `<wnid>/` folders by their labels, following a
    durable move plan (`plan_file`) so a crash anywhere resumes; then record the new names."""

    runs_in: ClassVar[RunsIn] = "worker"  # reads the devkit (scipy) and renames thousands of files
    folder: Path
    plan_file: Path


@dataclass(frozen=True)
class VerifyUnit(UnitAction):
    """Re-read every file of the folder: exact member set, sizes, sha256."""

    phase: ClassVar[Phase | None] = "verifying"
    runs_in: ClassVar[RunsIn] = "worker"
    folder: Path

    def traffic(self, comp: Component, state: ComponentState) -> tuple[int, int]:
        return (sum(u.index.bytes for u in state.units if u.name == self.unit), 0)


@dataclass(frozen=True)
class DeleteClassTar(UnitAction):
    """The folder is verified and durable: its loose tar may go, once the folder is re-proved."""

    phase: ClassVar[Phase | None] = "verifying"
    runs_in: ClassVar[RunsIn] = "worker"  # re-hashes the folder right before the unlink

    tar: Path


@dataclass(frozen=True)
class DeleteArchive(Action):
    """keep_archive = false and every unit is verified: remove the downloaded archive, once every
    unit's folder is re-proved."""

    phase: ClassVar[Phase | None] = "verifying"
    runs_in: ClassVar[RunsIn] = "worker"  # re-hashes every unit right before the unlink

    path: Path


@dataclass(frozen=True)
class Blocked(Action):
    """Nothing can be done until the user acts; carries the one-line reason. Never runs: the executor
    records it as the component's (or unit's) error."""

    phase: ClassVar[Phase | None] = None

    reason: str
    unit: str = ""

    @property
    def key(self) -> tuple[str, str]:
        return (self.component, self.unit)
