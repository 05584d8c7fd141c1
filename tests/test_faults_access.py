"""A read-only data root and a root datasetd may not write: clear errors, nothing changed."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from conftest import Dataset, datasetd_cmd, tree_digest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounts and user switching need root (CI runs as root)")


def test_read_only_root_fails_clearly_and_changes_nothing(dataset: Dataset) -> None:
    before = tree_digest(dataset.root)
    subprocess.run(["mount", "--bind", str(dataset.root), str(dataset.root)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(dataset.root)], check=True)
        done = subprocess.run([*datasetd_cmd(), "apply", str(dataset.manifest)], capture_output=True, text=True,
                              timeout=60)
    finally:
        subprocess.run(["umount", str(dataset.root)], check=True)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert str(dataset.root) in line and "Read-only" in line, line
    assert tree_digest(dataset.root) == before


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) is not installed")
def test_permission_denied_on_the_target_names_the_path(dataset: Dataset) -> None:
    """Root without CAP_DAC_OVERRIDE obeys permission bits: the target belongs to someone else."""
    (dataset.root / "train").mkdir(mode=0o755)
    os.chown(dataset.root / "train", 65534, 65534)
    done = subprocess.run(["setpriv", "--bounding-set", "-dac_override,-dac_read_search",
                           *datasetd_cmd(), "apply", str(dataset.manifest)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert "Permission denied" in done.stderr and str(dataset.root / "train") in done.stderr, done.stderr
    assert not list((dataset.root / "train").iterdir())
    assert (dataset.root / "val").is_dir(), "the component that can be written still converges"
