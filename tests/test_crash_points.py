"""SIGKILL at every rename, unlink and flush datasetd makes (strace --inject), then converge.

Two flows: class tars, a flat tar and an HTTP download; and val arranged by class from a devkit.

strace counts per process: `when=N` kills each traced process (coordinator and
every worker) at its own N-th matching syscall, so sweeping N from 1 to the
largest count seen hits every point of every process.
"""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import (
    class_tree,
    datasetd_cmd,
    gnu_tar_extract,
    gnu_tar_reference,
    journal_units,
    make_tar,
    sha256,
    tree_digest,
    write_manifest,
)
from datasetd.demo import build_train, build_val
from http_server import FaultServer
from imagenet_synth import build_val_set

WNIDS = ["n01000001", "n01000002", "n01000003", "n01000004"]
FAMILIES = {
    "rename": "rename,renameat,renameat2",
    "unlink": "unlink,unlinkat,rmdir",
    "flush": "fsync,fdatasync,syncfs",
    "state-write": "pwrite64",  # SQLite's journal and WAL writes
}
pytestmark = pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")


DEVKIT = make_tar([(f"devkit/data/file{i}.txt", bytes([i]) * (3000 + i)) for i in range(20)])


@pytest.fixture(scope="module")
def devkit_url() -> Iterator[str]:
    with FaultServer(files={"/devkit.tar": DEVKIT}) as server:
        yield server.url("/devkit.tar")


def make_initial(base: Path, devkit_url: str) -> tuple[Path, dict[str, str], dict[str, str]]:
    """A root in the manual recipe's mid-way state: some class tars split, one untarred and marked."""
    root = base / "root"
    train = root / "train"
    train.mkdir(parents=True)
    outer = build_train(WNIDS, files=3, size=(300, 900))
    val, _ = build_val(WNIDS[:2])
    (root / "outer.tar").write_bytes(outer)
    (root / "val.tar").write_bytes(val)
    split = gnu_tar_extract(root / "outer.tar", base / "split")
    shutil.copy(split / f"{WNIDS[0]}.tar", train)  # split by hand, not yet untarred
    shutil.copy(split / f"{WNIDS[1]}.tar", train / f"Z_{WNIDS[1]}.tar")  # the recipe's script did this one
    gnu_tar_extract(split / f"{WNIDS[1]}.tar", train / WNIDS[1])
    ref_train = gnu_tar_reference(root / "outer.tar", base / "gnu")
    ref_val = tree_digest(gnu_tar_extract(root / "val.tar", base / "refval"))
    write_manifest(base / "m.toml", root, f"""
[components.train]
source = "file"
path = "outer.tar"
sha256 = "{sha256(outer)}"
unpack = "class-tars"
into = "train"

[components.val]
source = "file"
path = "val.tar"
sha256 = "{sha256(val)}"
unpack = "tar"
into = "val"

[components.devkit]
source = "http"
url = "{devkit_url}"
file = "downloads/devkit.tar"
sha256 = "{sha256(DEVKIT)}"
unpack = "tar"
into = "devkit"
keep_archive = false
""", workers=2)
    return root, ref_train, ref_val


def strace_apply(workdir: Path, family: str, when: int | None) -> subprocess.CompletedProcess[str]:
    syscalls = FAMILIES[family]
    cmd = ["strace", "-f", "-qq", "-o", str(workdir / "strace.log"), "-e", f"trace={syscalls}"]
    if when is not None:
        cmd += ["-e", f"inject={syscalls}:signal=SIGKILL:when={when}"]
    return subprocess.run([*cmd, *datasetd_cmd(), "--log-format", "json", "apply", str(workdir / "m.toml")],
                          capture_output=True, text=True, timeout=120)


def max_calls_per_process(log: Path) -> int:
    pids = Counter(line.split()[0] for line in log.read_text().splitlines()
                   if line and not line.split()[1].startswith(("+++", "---")))
    return max(pids.values(), default=0)


def check_invariant(root: Path, ref_train: dict[str, str]) -> None:
    train = root / "train"
    verified = journal_units(root, "verified", "train")
    on_disk = tree_digest(train) if train.exists() else {}
    for w in WNIDS:
        if w in verified:
            assert class_tree(on_disk, w) == class_tree(ref_train, w), \
                f"{w} is recorded verified but its folder is not complete"
        # classes without a loose tar are read in place: the outer archive is their tar
        has_tar = any(p.exists() for p in (train / f"{w}.tar", train / f"Z_{w}.tar", root / "outer.tar"))
        assert has_tar or w in verified, f"{w}: neither its tar nor a verified folder"


@pytest.mark.parametrize("family", ["rename", "unlink", "flush"])
def test_kill_at_every_point_then_converge(tmp_path: Path, family: str, devkit_url: str) -> None:
    sweep(tmp_path, family, devkit_url)


@pytest.mark.slow
@pytest.mark.timeout(2400)  # ~150 kill points, each a fresh process: minutes, not a timed assertion
def test_kill_at_every_state_write_then_converge(tmp_path: Path, devkit_url: str) -> None:
    sweep(tmp_path, "state-write", devkit_url)


def sweep(tmp_path: Path, family: str, devkit_url: str) -> None:
    pristine = tmp_path / "pristine"
    _root, ref_train, ref_val = make_initial(pristine, devkit_url)
    ref_devkit = tree_digest(gnu_tar_extract(_write(tmp_path / "devkit.tar", DEVKIT), tmp_path / "refdevkit"))
    probe = tmp_path / "probe"
    shutil.copytree(pristine, probe, symlinks=True)
    (probe / "m.toml").write_text((pristine / "m.toml").read_text().replace(str(pristine), str(probe)))
    clean = strace_apply(probe, family, None)
    assert clean.returncode == 0, clean.stderr[-2000:]
    points = max_calls_per_process(probe / "strace.log")
    assert points >= 1, f"no {family} syscalls seen: the sweep would prove nothing"
    killed = 0
    for n in range(1, points + 1):
        work = tmp_path / f"{family}-{n}"
        shutil.copytree(pristine, work, symlinks=True)
        (work / "m.toml").write_text((pristine / "m.toml").read_text().replace(str(pristine), str(work)))
        result = strace_apply(work, family, n)
        killed += result.returncode != 0
        check_invariant(work / "root", ref_train)
        again = subprocess.run([*datasetd_cmd(), "--log-format", "json", "apply", str(work / "m.toml")],
                               capture_output=True, text=True, timeout=120)
        assert again.returncode == 0, f"kill at {family} #{n}: re-run did not converge:\n{again.stderr[-3000:]}"
        check_invariant(work / "root", ref_train)
        assert tree_digest(work / "root/train") == ref_train, f"kill at {family} #{n}: train differs"
        assert tree_digest(work / "root/val") == ref_val, f"kill at {family} #{n}: val differs"
        assert tree_digest(work / "root/devkit") == ref_devkit, f"kill at {family} #{n}: devkit differs"
        assert not (work / "root/downloads/devkit.tar").exists(), "the verified download was not deleted"
        shutil.rmtree(work)
    assert killed >= 1, f"no run was interrupted by the {family} sweep"
    print(f"{family}: {points} kill points, {killed} runs interrupted, all converged")


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# ---- val arranged by class: every rename and flush of the arrangement flow ---------------------


def val_invariant(root: Path, files: dict[str, bytes], truth: dict[str, str]) -> None:
    """Each val file is at its flat name or in its class folder, exactly once, with its bytes."""
    val = root / "val"
    if not val.exists():
        return
    for name, data in files.items():
        places = [p for p in (val / name, val / truth[name] / name) if p.exists()]
        assert len(places) == 1, f"{name}: found at {places}"
        assert places[0].read_bytes() == data, f"{places[0]}: bytes differ"


@pytest.mark.parametrize("family", ["rename", "flush"])
def test_kill_at_every_point_of_val_arrangement_then_converge(tmp_path: Path, family: str) -> None:
    pristine = tmp_path / "pristine"
    vs = build_val_set(pristine)
    expected = vs.expected_tree()
    probe = tmp_path / "probe"
    shutil.copytree(pristine, probe, symlinks=True)
    (probe / "m.toml").write_text((pristine / "m.toml").read_text().replace(str(pristine), str(probe)))
    clean = strace_apply(probe, family, None)
    assert clean.returncode == 0, clean.stderr[-2000:]
    points = max_calls_per_process(probe / "strace.log")
    assert points >= len(vs.files), f"only {points} {family} calls: the arrangement's are missing"
    killed = 0
    for n in range(1, points + 1):
        work = tmp_path / f"{family}-{n}"
        shutil.copytree(pristine, work, symlinks=True)
        (work / "m.toml").write_text((pristine / "m.toml").read_text().replace(str(pristine), str(work)))
        result = strace_apply(work, family, n)
        killed += result.returncode != 0
        val_invariant(work / "root", vs.files, vs.truth)
        again = subprocess.run([*datasetd_cmd(), "--log-format", "json", "apply", str(work / "m.toml")],
                               capture_output=True, text=True, timeout=120)
        assert again.returncode == 0, f"kill at {family} #{n}: re-run did not converge:\n{again.stderr[-3000:]}"
        assert tree_digest(work / "root/val") == expected, f"kill at {family} #{n}: val differs"
        assert (work / "root/classes.tsv").exists() and not (work / "root/.val.arrange.json").exists()
        shutil.rmtree(work)
    assert killed >= 1, f"no run was interrupted by the {family} sweep"
    print(f"val arrangement, {family}: {points} kill points, {killed} runs interrupted, all converged")
