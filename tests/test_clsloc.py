"""ILSVRC2015 CLS-LOC over HTTP as a .tar.gz: streamed (no uncompressed copy), val arranged inside the tree.

Both roots the issue names: the archive's own `ILSVRC2015/` (labels from the 2015 devkit)
and the Kaggle copy's `ILSVRC/` (labels from its LOC_val_solution.csv).
"""

from __future__ import annotations

import gzip
import random
from pathlib import Path

import pytest

from conftest import sha256, tree_digest, write_manifest
from datasetd import cli
from datasetd.demo import fake_jpeg, tar_bytes
from http_server import FaultServer
from imagenet_synth import LEAVES, make_devkit, tar_dir, val_name

VAL = [LEAVES[i % len(LEAVES)] for i in (4, 1, 0, 3, 2, 2, 1, 4, 0, 3)]


def cls_loc_archive(top: str, kaggle_csv: bool) -> tuple[bytes, dict[str, bytes]]:
    rng = random.Random(top)
    members: dict[str, bytes] = {}
    for w in LEAVES:
        for i in (1, 2):
            members[f"{top}/Data/CLS-LOC/train/{w}/{w}_{i}.JPEG"] = fake_jpeg(rng, 300)
    names = [val_name(i) for i in range(1, len(VAL) + 1)]
    for n in reversed(names):  # member order is not name order
        members[f"{top}/Data/CLS-LOC/val/{n}"] = fake_jpeg(rng, rng.randint(200, 600))
    members[f"{top}/Annotations/CLS-LOC/val/{names[0][:-5]}.xml"] = b"<annotation/>"
    if kaggle_csv:
        rows = ["ImageId,PredictionString"] + [f"{n[:-5]},{w} 1 2 3 4" for n, w in zip(names, VAL, strict=True)]
        members["LOC_val_solution.csv"] = ("\n".join(rows) + "\n").encode()
    return gzip.compress(tar_bytes(list(members.items())), compresslevel=1), members


@pytest.mark.parametrize("top", ["ILSVRC2015", "ILSVRC"])
def test_cls_loc_tar_gz_over_http_is_streamed_and_val_arranged(tmp_path: Path, top: str) -> None:
    kaggle = top == "ILSVRC"
    data, members = cls_loc_archive(top, kaggle_csv=kaggle)
    root = tmp_path / "root"
    devkit = ""
    labels = 'labels = { csv = "cls-loc/LOC_val_solution.csv" }'
    if not kaggle:
        kit = make_devkit(tmp_path / "kit", 2015, VAL)
        tar_dir(kit, tmp_path / "devkit.tar")
        devkit = f"""
[components.devkit]
source = "file"
path = "{tmp_path / 'devkit.tar'}"
unpack = "tar"
into = "devkit"
"""
        labels = 'labels = { devkit = "devkit" }'
    with FaultServer(files={"/ILSVRC2015_CLS-LOC.tar.gz": data}) as server:
        m = write_manifest(tmp_path / "m.toml", root, f"""
[components.cls-loc]
source = "http"
url = "{server.url('/ILSVRC2015_CLS-LOC.tar.gz')}"
file = "downloads/ILSVRC2015_CLS-LOC.tar.gz"
sha256 = "{sha256(data)}"
unpack = "tar"
into = "cls-loc"
arrange = "by-class"
{labels}
{'after = ["devkit"]' if not kaggle else ''}
{devkit}
""")
        assert cli.main(["--log-format", "json", "apply", str(m)]) == 0
    val = f"{top}/Data/CLS-LOC/val"
    truth = {val_name(i): w for i, w in enumerate(VAL, start=1)}
    expected = {(f"{val}/{truth[n.rsplit('/', 1)[1]]}/{n.rsplit('/', 1)[1]}" if n.startswith(f"{val}/") else n):
                sha256(b) for n, b in members.items()}
    assert tree_digest(root / "cls-loc") == expected  # val by class, train and the rest untouched
    downloads = sorted(p.name for p in (root / "downloads").iterdir())
    assert downloads == ["ILSVRC2015_CLS-LOC.tar.gz"]  # no uncompressed copy anywhere
    assert not list(root.glob("*.tar"))
    labels_rows = (root / "val_labels.csv").read_text().splitlines() if (root / "val_labels.csv").exists() else \
        (root / "cls-loc_labels.csv").read_text().splitlines()
    assert f"cls-loc/{val}/{truth[val_name(1)]}/{val_name(1)},{truth[val_name(1)]}," in "\n".join(labels_rows)
    assert cli.main(["--log-format", "json", "verify", str(m)]) == 0
