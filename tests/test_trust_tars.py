"""Ordinary tars are ordinary: what GNU tar makes and extracts safely is accepted, byte for byte.

Real archives made by GNU tar with `-C dir .` (members `./`, `./nX.tar`, class tars with a `./` member)
and a member named with a backslash; datasetd's tree is compared with GNU tar's own extraction.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from conftest import WNIDS, gnu_tar_extract, gnu_tar_reference, run_datasetd, sha256, tree_digest, write_manifest

CLASSES = WNIDS[:3]


def _gnu_tar_dot(source: Path, out: Path) -> Path:
    subprocess.run(["tar", "-cf", str(out), "-C", str(source), "."], check=True)
    return out


def _build(tmp_path: Path) -> tuple[Path, Path]:
    """train.tar of class tars and a flat val.tar, every one made with `tar -cf X -C dir .`."""
    split = tmp_path / "split"
    split.mkdir()
    for i, wnid in enumerate(CLASSES):
        folder = tmp_path / "classes" / wnid
        folder.mkdir(parents=True)
        for j in range(3):
            (folder / f"{wnid}_{j}.JPEG").write_bytes(bytes([i, j]) * (700 + 31 * j))
        (folder / "\\x.JPEG").write_bytes(b"a backslash is an ordinary character")
        _gnu_tar_dot(folder, split / f"{wnid}.tar")
    root = tmp_path / "root"
    (root / "sources").mkdir(parents=True)
    train = _gnu_tar_dot(split, root / "sources/train.tar")
    flat = tmp_path / "val"
    (flat / "sub").mkdir(parents=True)
    (flat / "sub/a.JPEG").write_bytes(b"val" * 300)
    (flat / "b\\c.JPEG").write_bytes(b"more" * 100)
    val = _gnu_tar_dot(flat, root / "sources/val.tar")
    return train, val


def test_tars_made_with_dash_c_dot_and_backslash_names_extract_like_gnu_tar(tmp_path: Path) -> None:
    train, val = _build(tmp_path)
    listing = subprocess.run(["tar", "-tf", str(train)], capture_output=True, text=True, check=True).stdout
    assert listing.splitlines()[0] == "./" and f"./{CLASSES[0]}.tar" in listing
    root = train.parents[1]
    manifest = write_manifest(tmp_path / "m.toml", root, f"""
[components.train]
source = "file"
path = "sources/train.tar"
sha256 = "{sha256(train.read_bytes())}"
unpack = "class-tars"
into = "train"

[components.val]
source = "file"
path = "sources/val.tar"
unpack = "tar"
into = "val"
""")
    result = run_datasetd("apply", str(manifest))
    assert result.returncode == 0, result.stderr
    assert tree_digest(root / "train") == gnu_tar_reference(train, tmp_path / "gnu")
    assert tree_digest(root / "val") == tree_digest(gnu_tar_extract(val, tmp_path / "gnu-val"))
    assert (root / "train" / CLASSES[0] / "\\x.JPEG").is_file()
    check = subprocess.run(["sha256sum", "--quiet", "-c", str(root / f".datasetd/sha256/train/{CLASSES[1]}.sha256")],
                           cwd=root / "train", capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert run_datasetd("verify", str(manifest)).returncode == 0
