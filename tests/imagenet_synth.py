"""Synthetic ILSVRC devkits in the published layouts (imagenet-facts.md), written with scipy.io.savemat.

Leaf IDs are deliberately not in sorted-WNID order and ancestors are included
(2012/2014), so a reader that sorts, or keeps the ancestors, gets labels wrong.
"""

from __future__ import annotations

import hashlib
import io
import random
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.io

from conftest import write_manifest
from datasetd.demo import fake_jpeg, tar_bytes

# ILSVRC ID order (1, 2, 3, ...) deliberately differs from sorted WNID order.
LEAVES = ["n03126707", "n01440764", "n02012849", "n04592741", "n01443537"]
WORDS = {"n03126707": "crane", "n01440764": "tench, Tinca tinca", "n02012849": "crane",
         "n04592741": "wing", "n01443537": "goldfish, Carassius auratus"}
ANCESTORS = ["n00001740", "n00002137"]  # "entity" first, as the devkit readme says of the root


def _struct(dtype_fields: list[str], rows: list[tuple[object, ...]]) -> np.ndarray:
    arr = np.zeros((len(rows), 1), dtype=[(f, object) for f in dtype_fields])
    for i, row in enumerate(rows):
        arr[i, 0] = row
    return arr


def write_meta(path: Path, year: int, leaves: list[str] = LEAVES) -> None:
    """meta.mat (2012), meta_clsloc.mat (2014) or meta_clsloc.mat (2015) as the devkits ship them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if year == 2015:
        fields = ["ILSVRC2015_CLSLOC_ID", "WNID", "name", "description", "num_train_images"]
        rows = [(np.uint16(i), w, WORDS.get(w, w), f"gloss of {w}", np.uint16(10))
                for i, w in enumerate(leaves, start=1)]
        arr = _struct(fields, rows).reshape(1, -1)  # a 1x1000 struct in the real file
        scipy.io.savemat(str(path), {"synsets": arr})
        return
    id_field = "ILSVRC2012_ID" if year == 2012 else "ILSVRC2014_ID"
    fields = [id_field, "WNID", "words", "gloss", "num_children", "children", "wordnet_height",
              "num_train_images"]
    n = len(leaves)
    rows: list[tuple[object, ...]] = [
        (np.uint16(i), w, WORDS.get(w, w), f"gloss of {w}", np.uint16(0), np.zeros((1, 0), np.uint16),
         np.uint16(0), np.uint16(10))
        for i, w in enumerate(leaves, start=1)
    ]
    root_id, mid_id = n + 1, n + 2
    rows.append((np.uint16(root_id), ANCESTORS[0], "entity", "the root", np.uint16(1),
                 np.array([[mid_id]], np.uint16), np.uint16(2), np.uint16(0)))
    rows.append((np.uint16(mid_id), ANCESTORS[1], "physical entity", "an ancestor", np.uint16(n),
                 np.arange(1, n + 1, dtype=np.uint16).reshape(1, -1), np.uint16(1), np.uint16(0)))
    scipy.io.savemat(str(path), {"synsets": _struct(fields, rows)})


def val_name(i: int) -> str:
    return f"ILSVRC2012_val_{i:08d}.JPEG"


def make_devkit(tree: Path, year: int, val_wnids: list[str], leaves: list[str] = LEAVES) -> Path:
    """A devkit folder under `tree` whose ground truth labels val file i (1-based, by name) val_wnids[i-1]."""
    top = {2012: "ILSVRC2012_devkit_t12", 2014: "ILSVRC2014_devkit", 2015: "ILSVRC2015_devkit"}[year]
    data = tree / top / ("data" if year != 2015 else "devkit/data")
    meta = {2012: "meta.mat", 2014: "meta_clsloc.mat", 2015: "meta_clsloc.mat"}[year]
    write_meta(data / meta, year, leaves)
    gt = {2012: "ILSVRC2012_validation_ground_truth.txt",
          2014: "ILSVRC2014_clsloc_validation_ground_truth.txt",
          2015: "ILSVRC2015_clsloc_validation_ground_truth.txt"}[year]
    ids = {w: i for i, w in enumerate(leaves, start=1)}
    (data / gt).write_text("".join(f"{ids[w]}\n" for w in val_wnids))
    return tree / top


def tar_dir(src: Path, out: Path, order: list[str] | None = None) -> Path:
    """Tar the files of `src` (top folder kept); `order` lists member names in the order to write them."""
    with tarfile.open(out, "w", format=tarfile.GNU_FORMAT) as t:
        if order is None:
            t.add(src, arcname=src.name)
        else:
            for name in order:
                t.add(src / name, arcname=name)
    return out


def solution_csv(path: Path, val_wnids: list[str]) -> Path:
    lines = ["ImageId,PredictionString"]
    for i, w in enumerate(val_wnids, start=1):
        lines.append(f"ILSVRC2012_val_{i:08d},{w} 1 2 30 40 {w} 5 6 70 80")
    path.write_text("\n".join(lines) + "\n")
    return path


PER_CLASS = 3


@dataclass
class ValSet:
    root: Path
    manifest: Path
    files: dict[str, bytes]  # val file name -> bytes (as in the val tar)
    truth: dict[str, str]  # val file name -> WNID (the ground truth)

    def run(self, *args: str) -> int:
        from datasetd import cli

        return cli.main(["--log-format", "json", *args, str(self.manifest)])

    def expected_tree(self) -> dict[str, str]:
        return {f"{self.truth[n]}/{n}": hashlib.sha256(b).hexdigest() for n, b in self.files.items()}


def build_val_set(base: Path, year: int = 2012, labels: str = 'labels = { devkit = "devkit" }',
                  extra: str = "", extra_files: int = 0, real_jpegs: bool = False) -> ValSet:
    """base/root with a devkit tar (`year` layout) and a flat val tar in src/, base/m.toml arranging val."""
    rng = random.Random(year)
    wnids = [w for w in LEAVES for _ in range(PER_CLASS)]
    rng.shuffle(wnids)
    truth = {val_name(i): w for i, w in enumerate(wnids, start=1)}
    names = [*truth, *(val_name(len(wnids) + i) for i in range(1, extra_files + 1))]
    files = {n: jpeg(i) if real_jpegs else fake_jpeg(rng, rng.randint(200, 900)) for i, n in enumerate(names)}
    order = list(files)
    rng.shuffle(order)  # member order differs from name order, as in the real val tar
    root = base / "root"
    (root / "src").mkdir(parents=True)
    (root / "src" / "val.tar").write_bytes(tar_bytes([(n, files[n]) for n in order]))
    tar_dir(make_devkit(base / "kit", year, wnids), root / "src" / "devkit.tar")
    solution_csv(root / "LOC_val_solution.csv", wnids)
    m = write_manifest(base / "m.toml", root, f"""
[components.devkit]
source = "file"
path = "src/devkit.tar"
unpack = "tar"
into = "devkit"

[components.val]
source = "file"
path = "src/val.tar"
unpack = "tar"
into = "val"
after = ["devkit"]
arrange = "by-class"
{labels}
{extra}
""")
    return ValSet(root, m, files, truth)


def jpeg(seed: int) -> bytes:
    """A real 8x8 JPEG (Pillow), so a consumer's decoder accepts it."""
    from PIL import Image

    rng = random.Random(seed)
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (rng.randrange(256), rng.randrange(256), rng.randrange(256))).save(buf, "JPEG")
    return buf.getvalue()


def load_imagefolder(data_dir: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Hugging Face `datasets`' imagefolder loader on a local tree, offline, images not decoded."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")  # a local folder needs no hub; nothing may leave loopback
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(cache))
    import datasets

    # the loader names the split after the folder ("val" -> validation): take the one split it finds
    (ds,) = datasets.load_dataset("imagefolder", data_dir=str(data_dir), cache_dir=str(cache)).values()
    return ds.cast_column("image", datasets.Image(decode=False))
