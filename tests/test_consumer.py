"""A consumer nobody here wrote reads the trees: Hugging Face `datasets`' imagefolder loader, offline.

It assigns labels as torchvision's ImageFolder does (sorted folder names); the
test checks every image it yields carries the class of the folder datasetd put
it in, which is the class its class tar came from.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from conftest import WNIDS, sha256, write_manifest
from datasetd import cli
from datasetd.demo import tar_bytes
from imagenet_synth import jpeg, load_imagefolder


def test_imagefolder_reads_the_train_tree_with_each_image_in_its_class(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the class tars are written in an order that is not sorted: the loader must still index by sorted WNID
    order = [WNIDS[3], WNIDS[0], WNIDS[2], WNIDS[1]]
    members, truth = [], {}
    for k, w in enumerate(order):
        files = [(f"{w}_{i}.JPEG", jpeg(100 * k + i)) for i in range(1, 4 + k)]
        truth.update({name: w for name, _ in files})
        members.append((f"{w}.tar", tar_bytes(files)))
    train = tar_bytes(members)
    root = tmp_path / "root"
    (root / "src").mkdir(parents=True)
    (root / "src" / "train.tar").write_bytes(train)
    m = write_manifest(tmp_path / "m.toml", root, f"""
[components.train]
source = "file"
path = "src/train.tar"
sha256 = "{sha256(train)}"
unpack = "class-tars"
into = "train"
expect = {{ classes = 4, files = {len(truth)} }}
""")
    assert cli.main(["--log-format", "json", "apply", str(m)]) == 0
    ds = load_imagefolder(root / "train", tmp_path / "hf", monkeypatch)
    names = ds.features["label"].names  # type: ignore[attr-defined]
    assert names == sorted(order)  # ImageFolder's index: sorted WNID, not archive order
    seen = {}
    for row in ds:  # type: ignore[attr-defined]
        path = Path(row["image"]["path"])
        seen[path.name] = names[row["label"]]
        Image.open(path).verify()
    assert seen == truth
