"""Power cut, not just kill -9 (issue 12): copies of an ext4 loop device taken while `apply` runs.

A SIGKILL keeps everything the kernel already accepted; a power cut keeps only what reached
the device. `root` is ext4 on a loop device, the kernel writes back nothing on its own and
the journal commits every 600 s (tests/ext4_loop.py), so a copy of the device holds what
datasetd made durable and nothing more. `apply` runs three components at once: class tars
(a third of them hand-split into `train/` as the manual recipe leaves them, the rest read in
place from the archive on the ordinary disk), a flat val tar, and an HTTP download with
`keep_archive = false`, so the class-tar deletes, the archive delete and the download's own
flushes all happen during the run. The run is frozen (SIGSTOP on its process group, every
thread stopped, no request in flight) for each copy.

Each copy is then "rebooted": `e2fsck -f -p`, mounted at root's path, and checked: a unit the
journal says is verified is on disk byte for byte as GNU tar extracts it, with its whole
`sha256sum -c` list (anything else is data lost); every hand-split class still has its tar
(plain or Z_, intact) or such a folder; a downloaded archive in place is the whole verified one.
The journal is read from a scratch copy, so `apply` is the first to open the cut journal itself.
Then `apply` runs on the copy and must converge byte-exact, with every tar and the download deleted.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import ext4_loop
from conftest import (
    class_tree,
    datasetd_cmd,
    gnu_tar_extract,
    gnu_tar_reference,
    make_tar,
    sha256,
    tree_digest,
    write_manifest,
)
from datasetd.demo import build_train, build_val
from http_server import FaultServer

pytestmark = ext4_loop.power_cut_marks()

CLASSES = [f"n{3000000 + i:08d}" for i in range(300)]
LOOSE = CLASSES[:100]  # hand-split into train/ before the run: their tars are deleted during it
EXTRA = make_tar([(f"extra/part{i:02d}.bin", bytes([i]) * 1000 + os.urandom(60_000)) for i in range(40)])
EMPTY_SHA256 = sha256(b"")
EVERY_EVENTS = 50  # log events between two copies: ~850 in a run, so ~17 copies
# The moments right after a download is renamed into place and right after it is deleted: a copy
# then holds only what the download's own flushes made durable, before any group commit flushes more.
RIGHT_AFTER = (b'"download.completed"', b'"archive.deleted"')
# The group commit fires on wall-clock age (2 s), and datasetd's clock runs on while it is frozen:
# holding each freeze a little longer makes it commit after less work, so the run gets several
# commits and the copies fall before, between and after them (as on a slow disk).
HOLD = 0.5


@dataclass
class Reference:
    """What GNU tar extracts, and the bytes of every hand-split class tar."""

    train: dict[str, str]
    val: dict[str, str]
    extra: dict[str, str]
    loose_tars: dict[str, str]  # wnid -> sha256 of its class tar


@dataclass
class Cut:
    """What one copy held: how far the run had durably got when the power went."""

    name: str
    train_verified: int
    loose_tars_left: int
    marked_unverified: int  # Z_ tars whose folder is not yet recorded verified
    val_verified: bool
    extra_verified: bool
    download_in_place: bool

    def __str__(self) -> str:
        return (f"{self.name}: train verified {self.train_verified}/{len(CLASSES)}, loose tars left "
                f"{self.loose_tars_left}/{len(LOOSE)} ({self.marked_unverified} Z_ unverified), val "
                f"{'verified' if self.val_verified else '-'}, extra {'verified' if self.extra_verified else '-'}, "
                f"download {'in place' if self.download_in_place else 'absent'}")


@dataclass
class Figures:
    checked: list[Cut] = field(default_factory=list)
    fsck: Counter[int] = field(default_factory=Counter)
    fsck_fixed: list[str] = field(default_factory=list)  # e2fsck's words beyond the journal replay


def build_inputs(tmp_path: Path, server_url: str) -> tuple[Path, Reference]:
    """Archives on the ordinary disk (a NAS path), the manifest, and GNU tar's reference trees."""
    nas = tmp_path / "nas"
    nas.mkdir()
    outer, (val, _truth) = build_train(CLASSES, files=12, size=(1000, 4000)), build_val(CLASSES)
    (nas / "train.tar").write_bytes(outer)
    (nas / "val.tar").write_bytes(val)
    (nas / "extra.tar").write_bytes(EXTRA)
    gnu = tmp_path / "gnu"
    ref = Reference(
        train=gnu_tar_reference(nas / "train.tar", gnu),
        val=tree_digest(gnu_tar_extract(nas / "val.tar", gnu / "val")),
        extra=tree_digest(gnu_tar_extract(nas / "extra.tar", gnu / "extra")),
        loose_tars={w: sha256((gnu / "split" / f"{w}.tar").read_bytes()) for w in LOOSE})
    manifest = write_manifest(tmp_path / "m.toml", tmp_path / "root", f"""
[components.train]
source = "file"
path = "{nas / 'train.tar'}"
size = {len(outer)}
sha256 = "{sha256(outer)}"
unpack = "class-tars"
into = "train"

[components.val]
source = "file"
path = "{nas / 'val.tar'}"
sha256 = "{sha256(val)}"
unpack = "tar"
into = "val"

[components.extra]
source = "http"
url = "{server_url}"
file = "downloads/extra.tar"
size = {len(EXTRA)}
sha256 = "{sha256(EXTRA)}"
unpack = "tar"
into = "extra"
keep_archive = false
""", workers=2)
    return manifest, ref


def place_loose_tars(root: Path, split: Path) -> None:
    """The manual recipe's state: class tars split out by hand, flushed before the run (the user's copy)."""
    (root / "train").mkdir()
    for w in LOOSE:
        shutil.copy(split / f"{w}.tar", root / "train" / f"{w}.tar")
    ext4_loop.run("sync", "-f", str(root))


# ---- the run, frozen for each copy ---------------------------------------------------------


def apply_taking_copies(manifest: Path, image: Path, dev: str, out: Path, log: Path) -> list[Path]:
    """A copy every EVERY_EVENTS events of the run's log (a pace set by its progress, so the count
    is the same on a fast or a loaded machine), right after each RIGHT_AFTER event, and one after
    the run exits."""
    out.mkdir()
    copies: list[Path] = []
    with log.open("w") as err:
        proc = subprocess.Popen([*datasetd_cmd(), "--log-format", "json", "apply", str(manifest)],
                                stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    try:
        with log.open("rb") as tail:
            events, next_copy, partial = 0, EVERY_EVENTS, b""
            while proc.poll() is None:
                time.sleep(0.005)
                *lines, partial = (partial + tail.read()).split(b"\n")
                events += len(lines)
                if events < next_copy and not any(k in line for line in lines for k in RIGHT_AFTER):
                    continue
                if not freeze(proc.pid):
                    break
                try:
                    ext4_loop.wait_stopped(proc.pid)
                    ext4_loop.settle(dev)
                    copies.append(ext4_loop.copy_device(image, out / f"copy-{len(copies):02d}.img"))
                    time.sleep(HOLD)
                finally:
                    os.killpg(proc.pid, signal.SIGCONT)
                next_copy = events + EVERY_EVENTS
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:  # a failed assertion above: leave no frozen datasetd behind
            os.killpg(proc.pid, signal.SIGKILL)
            os.killpg(proc.pid, signal.SIGCONT)
            proc.wait()
    assert code == 0, f"apply on the loop device failed:\n{log.read_text()[-3000:]}"
    ext4_loop.settle(dev)
    copies.append(ext4_loop.copy_device(image, out / f"copy-{len(copies):02d}-after-exit.img"))
    return copies


def freeze(pgid: int) -> bool:
    try:
        os.killpg(pgid, signal.SIGSTOP)
    except ProcessLookupError:  # the run ended between the poll and the signal
        return False
    return True


# ---- each copy: fsck, mount, invariant, converge ---------------------------------------------


def check_invariant(root: Path, ref: Reference, name: str) -> Cut:
    """Nothing recorded verified is missing or different; no hand-split class lost both copies."""
    train = root / "train"
    on_disk = tree_digest(train) if train.exists() else {}
    recorded = recorded_verified(root, root.parent / "journal-read")
    verified = recorded.get("train", set())
    marked = 0
    for w in CLASSES:
        if w in verified:
            differs = difference(class_tree(on_disk, w), class_tree(ref.train, w))
            assert not differs, f"{name}: {w} is recorded verified but {differs}: data lost"
            check_digest_list(root, "train", w, {f"{w}/{k}": v for k, v in class_tree(ref.train, w).items()})
        if w in LOOSE and w not in verified:
            tars = [p for p in (train / f"{w}.tar", train / f"Z_{w}.tar") if p.exists()]
            assert tars, f"{name}: {w}: neither its class tar nor a verified folder: data lost"
            assert sha256(tars[0].read_bytes()) == ref.loose_tars[w], f"{name}: {tars[0].name} damaged"
            marked += tars[0].name.startswith("Z_")
    for comp, tree in (("val", ref.val), ("extra", ref.extra)):
        if recorded.get(comp):
            differs = difference(tree_digest(root / comp), tree)
            assert not differs, f"{name}: {comp} is recorded verified but {differs}: data lost"
            check_digest_list(root, comp, comp, tree)
    download = root / "downloads/extra.tar"
    if download.exists():  # renamed into place only once checked and flushed
        assert sha256(download.read_bytes()) == sha256(EXTRA), f"{name}: {download} in place but not whole"
    loose_left = sum((train / f"{w}.tar").exists() or (train / f"Z_{w}.tar").exists() for w in LOOSE)
    return Cut(name, len(verified), loose_left, marked, bool(recorded.get("val")), bool(recorded.get("extra")),
               download.exists())


def check_digest_list(root: Path, component: str, name: str, expected: dict[str, str]) -> None:
    """The `sha256sum -c` list of a verified unit is flushed with its files (the group commit's
    syncfs), so a power cut leaves it whole: names relative to `into`, GNU tar's digests."""
    path = root / ".datasetd/sha256" / component / f"{name}.sha256"
    assert path.exists(), f"{path}: the digest list of a verified unit is missing after the cut"
    listed = {name: digest for digest, name in (line.split("  ", 1) for line in path.read_text().splitlines())}
    differs = difference(listed, expected)
    assert not differs, f"{path}: the digest list of a verified unit differs: {differs}"


def recorded_verified(root: Path, scratch: Path) -> dict[str, set[str]]:
    """component -> units the cut journal records verified, read from a scratch copy of it, so
    that `apply` is the first to open (and recover) the journal itself, as after a real reboot."""
    db = root / ".datasetd/journal.sqlite"
    if not db.exists():
        return {}
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    for suffix in ("", "-wal"):  # -shm is rebuilt from the WAL by whoever opens it first
        if Path(f"{db}{suffix}").exists():
            shutil.copy(f"{db}{suffix}", scratch / f"{db.name}{suffix}")
    with contextlib.closing(sqlite3.connect(scratch / db.name, timeout=5)) as conn:
        try:
            rows = list(conn.execute("SELECT component, unit FROM unit WHERE state='verified'"))
        except sqlite3.OperationalError:  # cut before the schema was written
            rows = []
    out: dict[str, set[str]] = {}
    for component, unit in rows:
        out.setdefault(component, set()).add(unit)
    return out


def difference(on_disk: dict[str, str], expected: dict[str, str]) -> str:
    """How a tree differs from GNU tar's, in a few words ("" when it does not)."""
    missing = sorted(expected.keys() - on_disk.keys())
    wrong = sorted(k for k in expected.keys() & on_disk.keys() if on_disk[k] != expected[k])
    extra = sorted(on_disk.keys() - expected.keys())
    if not (missing or wrong or extra):
        return ""
    empty = sum(on_disk[k] == EMPTY_SHA256 for k in wrong)
    return (f"{len(missing)} of {len(expected)} files missing, {len(wrong)} with other bytes ({empty} empty), "
            f"{len(extra)} unexpected (first: {(missing + wrong + extra)[0]})")


def check_copy(copy: Path, root: Path, manifest: Path, ref: Reference, figures: Figures) -> None:
    code, said = ext4_loop.fsck(copy)
    figures.fsck[code] += 1
    figures.fsck_fixed += said
    with ext4_loop.mounted(copy, root):
        cut = check_invariant(root, ref, copy.name)
        again = subprocess.run([*datasetd_cmd(), "--log-format", "json", "apply", str(manifest)],
                               capture_output=True, text=True, timeout=120)
        assert again.returncode == 0, f"{copy.name}: apply did not converge:\n{again.stderr[-3000:]}"
        assert "Traceback" not in again.stderr, f"{copy.name}:\n{again.stderr[-3000:]}"
        assert tree_digest(root / "train") == ref.train, f"{copy.name}: train differs after apply"
        assert tree_digest(root / "val") == ref.val, f"{copy.name}: val differs after apply"
        assert tree_digest(root / "extra") == ref.extra, f"{copy.name}: extra differs after apply"
        assert not (root / "downloads/extra.tar").exists(), f"{copy.name}: the download was not deleted"
    figures.checked.append(cut)


@pytest.mark.timeout(600)  # a bound for a wedged run, not a speed target (~2 min here)
def test_power_cut_copies_keep_every_verified_unit_and_converge(tmp_path: Path) -> None:
    started = time.monotonic()
    root, image = tmp_path / "root", tmp_path / "disk.img"
    with FaultServer(files={"/extra.tar": EXTRA}) as server:
        manifest, ref = build_inputs(tmp_path, server.url("/extra.tar"))
        # The download spans most of the run: its part's fsyncs (every second) then commit ext4's
        # journal while classes are extracted, marked and deleted, as a real download alongside would.
        server.throttle("/extra.tar", 200_000)
        ext4_loop.make_image(image)
        with ext4_loop.mounted(image, root, "commit=600") as dev:
            place_loose_tars(root, tmp_path / "gnu" / "split")
            with ext4_loop.flusher_off():
                copies = apply_taking_copies(manifest, image, dev, tmp_path / "copies", tmp_path / "apply.log")
        server.throttle("/extra.tar", None)
        figures = Figures()
        for copy in copies:
            check_copy(copy, root, manifest, ref, figures)
            copy.unlink()
    print("", *figures.checked, sep="\n")
    print(f"power cut: {len(copies)} copies taken, {len(figures.checked)} checked, e2fsck exits "
          f"{dict(sorted(figures.fsck.items()))}, beyond the journal replay it said {figures.fsck_fixed or 'nothing'}, "
          f"data lost 0, {time.monotonic() - started:.0f} s")
    # A sweep that cut only before the first commit or after the last would prove little.
    assert len(copies) >= 10, f"only {len(copies)} copies: the run is too short to cut it often; grow it"
    commits_between = len({c.train_verified for c in figures.checked})
    assert commits_between >= 4, f"the copies saw only {commits_between} distinct commit points"
    assert any(0 < c.loose_tars_left < len(LOOSE) for c in figures.checked), "no copy fell among the tar deletes"
