"""Installable as documented (systemd/README.md): a wheel builds and installs into a clean venv."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.timeout(1800)  # builds a wheel and installs it with its dependencies in a fresh venv
def test_the_wheel_builds_and_installs_in_a_clean_venv(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(tmp_path / "dist"), str(REPO)],
                   check=True, capture_output=True, timeout=600)
    wheel = next((tmp_path / "dist").glob("datasetd-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "datasetd/service/web_assets/page.js" in names and "datasetd/py.typed" in names
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(wheel)], check=True, timeout=900)
    version = subprocess.run([str(venv / "bin" / "datasetd"), "--version"], capture_output=True, text=True,
                             check=True, cwd=tmp_path, timeout=60)
    assert version.stdout.startswith("datasetd ")
    out = subprocess.run([str(venv / "bin" / "datasetd"), "plan", str(REPO / "manifests" / "imagenet.toml")],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert "Traceback" not in out.stderr and "train" in out.stdout, out.stderr
