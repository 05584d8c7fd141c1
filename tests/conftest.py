"""Shared fixtures: real tar files in a temporary data root, and a way to run datasetd."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from datasetd import cli
from datasetd.demo import build_train, build_val, tar_bytes
from hostile import Site
from manifest_cases import Work

WNIDS = [f"n0{1000000 + 7919 * i:07d}" for i in range(8)]


@dataclass
class Dataset:
    root: Path
    manifest: Path
    train_tar: Path
    val_tar: Path
    train_bytes: bytes
    val_bytes: bytes

    def run(self, *args: str) -> int:
        return cli.main(["--log-format", "json", *args, str(self.manifest)])

    def journal(self) -> sqlite3.Connection:
        return sqlite3.connect(self.root / ".datasetd" / "journal.sqlite")

    def steps(self) -> list[tuple[str, str, str, str]]:
        with self.journal() as db:
            return list(db.execute("SELECT component, unit, action, outcome FROM step ORDER BY id"))

    def status(self) -> dict:  # type: ignore[type-arg]
        return json.loads((self.root / ".datasetd" / "status.json").read_text())


def write_manifest(path: Path, root: Path, components: str, workers: int = 2) -> Path:
    path.write_text(f'version = 1\nroot = "{root}"\n[daemon]\nworkers = {workers}\n{components}')
    return path


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Work:
    """One working directory per test module for the bad-manifest suites (tests/manifest_cases.py)."""
    return Work(tmp_path_factory.mktemp("manifests"))


@pytest.fixture
def site(tmp_path: Path) -> Site:
    """A hostile-archive playground (tests/hostile.py): sources/, root/ and outside/ with a sentinel."""
    return Site.create(tmp_path)


@pytest.fixture
def dataset(tmp_path: Path) -> Dataset:
    """An ILSVRC-shaped train tar (8 classes) and a flat val tar under root/sources."""
    root = tmp_path / "root"
    sources = root / "sources"
    sources.mkdir(parents=True)
    train = build_train(WNIDS, files=6, size=(500, 3000))
    val, _ = build_val(WNIDS)
    (sources / "train.tar").write_bytes(train)
    (sources / "val.tar").write_bytes(val)
    manifest = write_manifest(tmp_path / "m.toml", root, f"""
[components.train]
source = "file"
path = "sources/train.tar"
size = {len(train)}
sha256 = "{sha256(train)}"
unpack = "class-tars"
into = "train"

[components.val]
source = "file"
path = "sources/val.tar"
sha256 = "{sha256(val)}"
unpack = "tar"
into = "val"
""")
    return Dataset(root, manifest, sources / "train.tar", sources / "val.tar", train, val)


def tree_digest(path: Path) -> dict[str, str]:
    """Relative name -> sha256 of every regular file under path."""
    out = {}
    for p in sorted(path.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[str(p.relative_to(path))] = sha256(p.read_bytes())
    return out


def journal_units(root: Path, state: str, component: str | None = None) -> set[str]:
    """Units the journal holds in `state`; empty if the journal or its schema is not there yet."""
    db = root / ".datasetd/journal.sqlite"
    if not db.exists():
        return set()
    sql, args = "SELECT unit FROM unit WHERE state=?", [state]
    if component is not None:
        sql, args = sql + " AND component=?", [state, component]
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            return {r[0] for r in conn.execute(sql, args)}
    except sqlite3.OperationalError:  # killed before the schema was written
        return set()


def gnu_tar_extract(archive: Path, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-xf", str(archive), "-C", str(dest)], check=True)
    return dest


def gnu_tar_reference(outer: Path, work: Path) -> dict[str, str]:
    """What the manual recipe gets from a tar of class tars with GNU tar: `W/name` -> sha256.
    The reference every class-tars test compares datasetd's output with, byte for byte."""
    split = gnu_tar_extract(outer, work / "split")
    for t in split.glob("*.tar"):
        gnu_tar_extract(t, work / "ref" / t.stem)
    return tree_digest(work / "ref")


def class_tree(reference: dict[str, str], unit: str) -> dict[str, str]:
    """One class's share of a gnu_tar_reference (or of a tree_digest of `into`), names relative to the class."""
    prefix = f"{unit}/"
    return {k.removeprefix(prefix): v for k, v in reference.items() if k.startswith(prefix)}


def datasetd_cmd() -> list[str]:
    return [sys.executable, "-m", "datasetd"]


def run_datasetd(*args: str, env: dict[str, str] | None = None,
                 timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*datasetd_cmd(), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


MakeTar = Callable[[list[tuple[str, bytes]]], bytes]
make_tar: MakeTar = tar_bytes
