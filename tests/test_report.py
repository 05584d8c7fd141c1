"""`verify --report`: archive digests, counts per class against `expect`, and the odd files a loader trips on.

The images are real: Pillow encodes an RGB JPEG, a CMYK JPEG and a PNG (named .JPEG, as
n02105855_2933.JPEG is in ILSVRC2012), and a JPEG cut before its EOI marker.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import pytest
from PIL import Image

from conftest import WNIDS, sha256, write_manifest
from datasetd import cli
from datasetd.archive.imagecheck import odd_image
from datasetd.demo import tar_bytes


def encode(mode: str, fmt: str, seed: int) -> bytes:
    rng = random.Random(seed)
    img = Image.new(mode, (16, 12), tuple(rng.randrange(256) for _ in mode))
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def real_train(per_class: dict[str, int]) -> tuple[bytes, dict[str, str]]:
    """A tar of class tars of real JPEGs; three planted odd files in the first class."""
    first = next(iter(per_class))
    planted = {f"{first}_1.JPEG": "CMYK JPEG (4 components)", f"{first}_2.JPEG": "PNG named as a JPEG",
               f"{first}_3.JPEG": "truncated JPEG (no EOI marker)"}
    members = []
    for w, n in per_class.items():
        files = [(f"{w}_{i}.JPEG", encode("RGB", "JPEG", hash((w, i)) & 0xFFFF)) for i in range(1, n + 1)]
        if w == first:
            files[0] = (files[0][0], encode("CMYK", "JPEG", 1))
            files[1] = (files[1][0], encode("RGB", "PNG", 2))
            good = files[2][1]
            files[2] = (files[2][0], good[: good.rfind(b"\xff\xd9") - 40])
        members.append((f"{w}.tar", tar_bytes(files)))
    return tar_bytes(members), planted


def test_marker_reader_on_real_images(tmp_path: Path) -> None:
    cases = {"rgb": (encode("RGB", "JPEG", 3), None), "gray": (encode("L", "JPEG", 4), None),
             "cmyk": (encode("CMYK", "JPEG", 5), "CMYK JPEG (4 components)"),
             "png": (encode("RGB", "PNG", 6), "PNG named as a JPEG"),
             "text": (b"<html>not found</html>", "not a JPEG (no SOI marker)")}
    for name, (data, want) in cases.items():
        (tmp_path / name).write_bytes(data)
        assert odd_image(tmp_path / name) == want, name
    rgb = cases["rgb"][0]
    (tmp_path / "cut").write_bytes(rgb[: len(rgb) // 2])
    assert odd_image(tmp_path / "cut") == "truncated JPEG (no EOI marker)"
    (tmp_path / "header-only").write_bytes(rgb[:30])
    assert odd_image(tmp_path / "header-only") is not None


@pytest.fixture
def applied(tmp_path: Path) -> tuple[Path, Path, bytes, dict[str, str]]:
    counts = {WNIDS[0]: 5, WNIDS[1]: 4, WNIDS[2]: 4}
    train, planted = real_train(counts)
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
expect = {{ classes = 3, files = 13, per_class_min = 4, per_class_max = 5 }}
""")
    assert cli.main(["--log-format", "json", "apply", str(m)]) == 0
    return m, root, train, planted


def test_report_names_planted_odd_files_digests_and_counts(applied: tuple[Path, Path, bytes, dict[str, str]],
                                                           tmp_path: Path) -> None:
    m, root, train, planted = applied
    out = tmp_path / "acceptance.md"
    assert cli.main(["--log-format", "json", "verify", "--report", str(out), str(m)]) == 0
    md = out.read_text()
    data = json.loads(out.with_suffix(".json").read_text())
    comp = data["components"]["train"]
    assert data["verified"] and comp["archive"]["sha256"] == sha256(train) and sha256(train) in md
    assert comp["files"] == 13 and comp["per_class"] == {WNIDS[0]: 5, WNIDS[1]: 4, WNIDS[2]: 4}
    assert comp["bytes"] == sum(p.stat().st_size for p in (root / "train").rglob("*.JPEG"))
    assert comp["expect_problems"] == [] and "met" in md
    odd = {o["file"]: o["problem"] for o in comp["odd_files"]}
    assert odd == {f"train/{WNIDS[0]}/{name}": why for name, why in planted.items()}
    for name, why in planted.items():
        assert f"`train/{WNIDS[0]}/{name}`: {why}" in md


def test_verify_checks_expectations_on_disk(applied: tuple[Path, Path, bytes, dict[str, str]],
                                            tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    m, _, _, _ = applied
    m.write_text(m.read_text().replace("per_class_min = 4, per_class_max = 5", "per_class = 5"))
    capsys.readouterr()
    assert cli.main(["--log-format", "json", "verify", "--report", str(tmp_path / "r.md"), str(m)]) == 1
    printed = capsys.readouterr().out
    assert f"BAD expect train: {WNIDS[1]}: 4 files, expected 5" in printed
    data = json.loads((tmp_path / "r.json").read_text())
    assert not data["verified"]
    assert data["components"]["train"]["expect_problems"] == [f"{WNIDS[1]}: 4 files, expected 5",
                                                              f"{WNIDS[2]}: 4 files, expected 5"]
    assert "**NOT MET**" in (tmp_path / "r.md").read_text()
