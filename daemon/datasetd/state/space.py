"""Free space against what a plan needs: per filesystem, bytes and inodes (the TFDS pitfall is failing
after a day). Reads statvfs only; the needs themselves come from the pure `core.costs`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from datasetd import logs
from datasetd.config.manifest import Manifest
from datasetd.core.costs import Need, space_needs
from datasetd.core.model import Observed
from datasetd.errors import NoSpace


@dataclass(frozen=True)
class Shortfall:
    filesystem: str
    need_bytes: int
    free_bytes: int
    need_inodes: int
    free_inodes: int
    inodes_known: bool

    @property
    def fits(self) -> bool:
        return self.need_bytes <= self.free_bytes and self.need_inodes <= self.free_inodes


def space_report(needs: list[Need]) -> list[Shortfall]:
    """Needs summed per filesystem, beside what it has free."""
    by_fs: dict[int, list[Need]] = {}
    mounts: dict[int, str] = {}
    for need in needs:
        existing = _existing_ancestor(need.path)
        dev = existing.stat().st_dev
        by_fs.setdefault(dev, []).append(need)
        mounts.setdefault(dev, _mount_point(existing))
    out = []
    for dev, group in by_fs.items():
        vfs = os.statvfs(mounts[dev])
        out.append(Shortfall(
            filesystem=mounts[dev], need_bytes=sum(n.bytes for n in group),
            free_bytes=vfs.f_bavail * vfs.f_frsize, need_inodes=sum(n.inodes for n in group),
            free_inodes=vfs.f_favail if vfs.f_files else 2**62,  # filesystems without inode limits
            inodes_known=all(n.inodes_known for n in group)))
    return out


def _existing_ancestor(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _mount_point(path: Path) -> str:
    path = path.resolve()
    dev = path.stat().st_dev
    while path != path.parent and path.parent.stat().st_dev == dev:
        path = path.parent
    return str(path)


def inodes_free(path: Path) -> int:
    """Inodes free on the filesystem `path` is (or will be) on."""
    vfs = os.statvfs(_existing_ancestor(path))
    return vfs.f_favail if vfs.f_files else 2**62


def check_space(manifest: Manifest, observed: Observed) -> None:
    """Refuse to start work that cannot fit (the TFDS pitfall: failing after a day)."""
    log = logs.get()
    for fs in space_report(space_needs(manifest, observed)):
        log.info("space.checked", filesystem=fs.filesystem, need_bytes=fs.need_bytes,
                 free_bytes=fs.free_bytes, need_inodes=fs.need_inodes, free_inodes=fs.free_inodes)
        if fs.need_bytes > fs.free_bytes:
            raise NoSpace(fs.filesystem, fs.need_bytes - fs.free_bytes, fs.free_bytes)
        if fs.need_inodes > fs.free_inodes:
            raise NoSpace(fs.filesystem, fs.need_inodes - fs.free_inodes, fs.free_inodes, "inodes")


def still_needed(needs: list[Need]) -> str:
    """What the rest of the plan needs where the disk filled up, so the user knows how much to free."""
    try:
        report = space_report(needs)
    except OSError:
        return ""
    return "".join(f"; {fs.filesystem} needs {fs.need_bytes:,} bytes and {fs.need_inodes:,} inodes "
                   f"to finish, {fs.free_bytes:,} bytes and {fs.free_inodes:,} inodes are free"
                   for fs in report if not fs.fits)
