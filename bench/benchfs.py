"""The filesystem the bench measures on: its own journalled ext4 in an image file, or the host's.

Why not the host directory: an ext4 made without a journal (this project's VM root is one)
makes every new inode skip, one read each, the inodes freed in the last minutes
(`recently_deleted()` in the inode allocator). The bench deletes a 10,000- or 100,000-file
tree after every run, so each run's creates cost more the more was deleted just before it,
and a ratio depends on which variant ran after which deletion. A user's ext4 has a journal
(mke2fs's default), where that check does not exist: so the bench makes one.

`mounted()` keeps a sparse image at DIR/ext4.img between runs (the data sets in it are
reused), checks it with e2fsck and remakes it when it is unusable or too small, attaches
it with direct I/O (no second page cache of the backing file, so dropping caches is still
a cold cache) and mounts it at DIR/fs; it unmounts and detaches on the way out, whatever
happened. `python bench/benchfs.py mount|umount [DIR]` does the same by hand (bench/profile.py
and perf on the last run's manifests need it mounted).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

IMAGE = "ext4.img"
MOUNT = "fs"
INODE_BYTES = 256  # mke2fs.conf's inode_size: every inode's slot in the inode tables
FS_OVERHEAD = 2 * 10**9  # journal, group descriptors, bitmaps, directories, reserved blocks
SLACK = 1.25  # ext4 allocates worse when nearly full; room for an old set or two as well
TOOLS = ("mkfs.ext4", "e2fsck", "dumpe2fs", "losetup", "mount", "umount", "findmnt")


class BenchFsError(RuntimeError):
    pass


@dataclass(frozen=True)
class Need:
    """What the rows keep in the image (data sets) and create at once at most (one work tree)."""
    bytes: int
    inodes: int

    def image_bytes(self) -> int:
        raw = int(self.bytes * SLACK) + self.inodes * INODE_BYTES + FS_OVERHEAD
        return -(-raw // 2**30) * 2**30  # whole GiB


def home(base: Path) -> Path:
    return base / MOUNT


def image(base: Path) -> Path:
    return base / IMAGE


def allocated(path: Path) -> int:
    """Bytes the host really holds for a (sparse) file."""
    try:
        return path.stat().st_blocks * 512
    except FileNotFoundError:
        return 0


def host_shortfall(base: Path, need: Need, margin: int) -> str | None:
    """Why an image for `need` could fill the host filesystem once fully written, or None if it fits."""
    size = max(need.image_bytes(), _kept_size(image(base)))
    free = shutil.disk_usage(base).free + allocated(image(base))
    if size + margin <= free:
        return None
    return (f"{base}: the bench's ext4 image needs up to {size / 1e9:.1f} GB on the host "
            f"(+ {margin / 1e9:.0f} GB margin), {free / 1e9:.1f} GB are free (image included)")


@contextlib.contextmanager
def exclusive(base: Path) -> Iterator[None]:
    """One bench at a time per DIR: a second one would unmount the first one's filesystem."""
    with (base / ".lock").open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BenchFsError(f"{base}: another bench run holds {base / '.lock'}; wait for it") from None
        yield


@contextlib.contextmanager
def mounted(base: Path, need: Need | None, say: Callable[[str], None]) -> Iterator[Path]:
    """The image mounted at DIR/fs for the duration (made or remade for `need` first; None: use it as is)."""
    if missing := [t for t in TOOLS if shutil.which(t) is None]:
        raise BenchFsError(f"bench: {', '.join(missing)} not found (apt-get install e2fsprogs util-linux), "
                           "or run on the directory's own filesystem with --fs host")
    img, at = image(base), home(base)
    release(base)
    if img.exists() and (why := _unusable(img, need)):
        say(f"bench: {img}: {why}; making it again (the data sets in it are generated again)")
        img.unlink()
    if not img.exists():
        if need is None:
            raise BenchFsError(f"{img}: no image yet; `make bench` makes it")
        _make(img, need, say)
    dev = _run("losetup", "--find", "--show", "--direct-io=on", str(img))
    try:
        at.mkdir(exist_ok=True)
        _run("mount", "-t", "ext4", dev, str(at))
        try:
            yield at
        finally:
            _unmount(at)
    finally:
        _detach(dev)


def release(base: Path) -> None:
    """Undo what a killed run left: its mount at DIR/fs and the loop devices on DIR/ext4.img."""
    at, img = home(base), image(base)
    if os.path.ismount(at):
        _unmount(at)
    if img.exists():
        for line in _run("losetup", "--noheadings", "--output", "NAME", "--associated", str(img)).splitlines():
            _detach(line.strip())


def describe(path: Path) -> dict[str, Any]:
    """The filesystem `path` is on, for results.json: device, type, journal, mount options, loop details."""
    source, fstype, options, target = _run("findmnt", "--noheadings", "--output", "SOURCE,FSTYPE,OPTIONS,TARGET",
                                           "--target", str(path)).split()[:4]
    name = Path(source).name
    info: dict[str, Any] = {"device": source, "filesystem": fstype, "mount_point": target, "mount_options": options}
    if fstype == "ext4":
        # jbd2 lists a journal per mounted ext4 that has one (its name is the device's, "-8" the inode).
        info["journal"] = any(j.name.startswith(f"{name}-") for j in Path("/proc/fs/jbd2").iterdir())
    loop = Path("/sys/block") / name / "loop"
    if loop.is_dir():
        info["loop"] = {"backing_file": (loop / "backing_file").read_text().strip(),
                        "direct_io": (loop / "dio").read_text().strip() == "1"}
    return info


# ---- the image --------------------------------------------------------------------------------


def _unusable(img: Path, need: Need | None) -> str | None:
    # -p repairs what is safe to repair (and replays the journal); 4 and up: errors left, or not ext4.
    check = subprocess.run(["e2fsck", "-p", str(img)], capture_output=True, text=True)
    if check.returncode >= 4:
        said = (check.stdout + check.stderr).strip().splitlines()
        return f"e2fsck exit {check.returncode} ({said[-1] if said else 'no output'})"
    if need is None:
        return None
    head = _superblock(img)
    size = head["Block count"] * head["Block size"]
    if size < need.image_bytes() or head["Inode count"] < need.inodes:
        return (f"{size / 1e9:.1f} GB / {head['Inode count']:,} inodes, the rows need "
                f"{need.image_bytes() / 1e9:.1f} GB / {need.inodes:,}")
    return None


def _make(img: Path, need: Need, say: Callable[[str], None]) -> None:
    say(f"bench: making {img}: ext4 (mke2fs defaults, journal on), {need.image_bytes() / 1e9:.1f} GB sparse, "
        f"{need.inodes:,} inodes")
    with img.open("wb") as f:
        f.truncate(need.image_bytes())
    # Inode tables and journal written now, not by ext4lazyinit in the background of the timed
    # runs (on a sparse file mke2fs punches holes for them instead: it costs ~70 MB and < 1 s).
    _run("mkfs.ext4", "-q", "-F", "-L", "datasetd-bench", "-N", str(need.inodes),
         "-E", "lazy_itable_init=0,lazy_journal_init=0", str(img))


def _kept_size(img: Path) -> int:
    try:
        return img.stat().st_size
    except FileNotFoundError:
        return 0


def _superblock(img: Path) -> dict[str, int]:
    out = _run("dumpe2fs", "-h", str(img))
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    return {k: int(fields[k].strip()) for k in ("Block count", "Block size", "Inode count")}


def _unmount(at: Path) -> None:
    os.sync()
    for _ in range(5):
        if subprocess.run(["umount", str(at)], capture_output=True).returncode == 0:
            return
        time.sleep(1)  # a process killed by Ctrl-C may still be closing its files there
    # Still busy: detach it from the tree now; the kernel finishes the unmount when the last file closes.
    _run("umount", "--lazy", str(at))


def _detach(dev: str) -> None:
    # On a device still in use this only marks it autoclear: it goes when the lazy unmount completes.
    subprocess.run(["losetup", "--detach", dev], capture_output=True)


def _run(*cmd: str) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise BenchFsError(f"bench: {' '.join(cmd)}: exit {done.returncode}: "
                           f"{(done.stderr or done.stdout).strip()}")
    return done.stdout.strip()


def _cli(argv: list[str], out: IO[str]) -> int:
    """mount | umount [DIR]: the image at DIR/fs by hand, as the last run left it (no remaking)."""
    if not argv or argv[0] not in ("mount", "umount"):
        print("usage: benchfs.py mount|umount [DIR]", file=out)
        return 2
    base = Path(argv[1] if len(argv) > 1 else os.environ.get("DATASETD_BENCH_DIR", "/var/tmp/datasetd-bench"))
    release(base)
    if argv[0] == "mount":
        dev = _run("losetup", "--find", "--show", "--direct-io=on", str(image(base)))
        _run("mount", "-t", "ext4", dev, str(home(base)))
        print(f"{image(base)} on {dev} mounted at {home(base)}; `benchfs.py umount` when done", file=out)
    return 0


if __name__ == "__main__":
    sys.exit(_cli(sys.argv[1:], sys.stdout))
