"""SIGKILL at arbitrary moments: the class-tar invariant holds after every kill, and a re-run converges."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

from conftest import (
    class_tree,
    datasetd_cmd,
    gnu_tar_extract,
    gnu_tar_reference,
    journal_units,
    sha256,
    tree_digest,
    write_manifest,
)
from datasetd.demo import build_train
from datasetd.state.lock import held_elsewhere

WNIDS = [f"n{9000000 + i:08d}" for i in range(48)]


def verified_units(root: Path) -> set[str]:
    return journal_units(root, "verified")


def _wait_for_workers_to_die(root: Path) -> None:
    """Workers die with the coordinator (PDEATHSIG), but one blocked in the kernel (a write or a
    flush on a busy disk) takes the signal only when it returns: wait until the root lock is free."""
    deadline = time.monotonic() + 60
    while held_elsewhere(root) and time.monotonic() < deadline:
        time.sleep(0.05)


def check_invariant(train: Path, reference: dict[str, dict[str, str]], root: Path) -> None:
    """Every class has its tar (plain or Z_) or a verified, complete folder; never neither."""
    verified = verified_units(root)
    for wnid, files in reference.items():
        has_tar = (train / f"{wnid}.tar").exists() or (train / f"Z_{wnid}.tar").exists()
        if has_tar:
            continue
        assert wnid in verified, f"{wnid}: tar gone but the folder was never verified"
        assert tree_digest(train / wnid) == files, f"{wnid}: tar gone and the folder is not complete"


def test_sigkill_anywhere_resumes_and_converges(tmp_path: Path) -> None:
    root = tmp_path / "root"
    train = root / "train"
    train.mkdir(parents=True)
    outer = build_train(WNIDS, files=40, size=(2000, 6000))
    (tmp_path / "outer.tar").write_bytes(outer)
    gnu_tar_extract(tmp_path / "outer.tar", train)  # hand-split class tars, as the manual recipe leaves them
    ref = gnu_tar_reference(tmp_path / "outer.tar", tmp_path / "gnu")
    reference = {w: class_tree(ref, w) for w in WNIDS}
    (root / "outer.tar").write_bytes(outer)
    manifest = write_manifest(tmp_path / "m.toml", root, f"""
[components.train]
source = "file"
path = "outer.tar"
sha256 = "{sha256(outer)}"
unpack = "class-tars"
into = "train"
""", workers=2)
    kills = stalled = 0
    progress = None
    for attempt in range(400):
        proc = subprocess.Popen([*datasetd_cmd(), "--log-format", "json", "apply", str(manifest)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # Each run gets a little further than the last; on a machine so busy that runs stop making
        # progress (every kill lands before the first group commit), the window grows faster.
        delay = 0.25 + 0.005 * attempt + 0.05 * stalled
        try:
            code = proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            _wait_for_workers_to_die(root)
            check_invariant(train, reference, root)
            now = (len(list(train.glob("n*.tar"))), len(list(train.glob("Z_*.tar"))), len(verified_units(root)))
            stalled = stalled + 1 if now == progress else 0
            progress = now
            print("killed at", delay, "plain", len(list(train.glob("n*.tar"))), "marked",
                  len(list(train.glob("Z_*.tar"))), "verified", len(verified_units(root)))
            continue
        assert code == 0, proc.stderr.read().decode() if proc.stderr else code
        break
    else:
        raise AssertionError("never converged")
    assert kills >= 3, f"the run finished too fast to be interrupted ({kills} kills): grow the data set"
    check_invariant(train, reference, root)
    assert {w: tree_digest(train / w) for w in reference} == reference
    assert not list(train.glob("*.tar")) and not list(train.glob(".*"))
