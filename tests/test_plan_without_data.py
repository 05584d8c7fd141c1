"""`datasetd plan` before any data is indexed: bytes to fetch, bytes and inodes needed, per component."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import WNIDS, run_datasetd, sha256, write_manifest
from datasetd import cli
from datasetd.archive.headers import count_members
from datasetd.demo import build_train
from test_faults_space import tmpfs

MANIFESTS = Path(__file__).resolve().parents[1] / "manifests"


def test_plan_json_on_the_shipped_manifest_reports_the_published_byte_counts(tmp_path: Path) -> None:
    text = (MANIFESTS / "imagenet.toml").read_text().replace('root = "/srv/datasets/imagenet"',
                                                            f'root = "{tmp_path / "imagenet"}"')
    m = tmp_path / "imagenet.toml"
    m.write_text(text)
    out = run_datasetd("plan", "--json", str(m))
    assert out.returncode in (0, 1), out.stderr  # 1: this machine has no 155 GB free
    comps = json.loads(out.stdout)["components"]
    assert comps["train"]["fetch_bytes"] == 147_897_477_120  # imagenet-facts.md
    assert comps["val"]["fetch_bytes"] == 6_744_924_160
    assert comps["devkit"]["fetch_bytes"] == 0  # a file source: nothing to download
    # nothing indexed: inodes come from `expect` (1,281,167 files in 1,000 class folders, plus train/)
    assert comps["train"]["need_inodes"] == 1 + 1_281_167 + 1_000 + 1  # the archive file, files, classes, into
    assert comps["train"]["need_bytes"] >= 2 * 147_897_477_120  # archive + at most as much extracted
    assert all(c["inodes_known"] for n, c in comps.items() if n != "devkit")
    text_out = run_datasetd("plan", str(m)).stdout
    assert "train            fetch 137.7 GiB (147,897,477,120 B)" in text_out


def test_header_count_seeks_past_data(tmp_path: Path) -> None:
    train = build_train(WNIDS[:3], files=5, size=(100, 300))
    path = tmp_path / "train.tar"
    path.write_bytes(train)
    count = count_members(path, nested=True)
    assert count is not None and (count.files, count.dirs) == (15, 3)
    flat = count_members(path, nested=False)
    assert flat is not None and flat.files == 3
    import gzip

    (tmp_path / "t.tar.gz").write_bytes(gzip.compress(train))
    assert count_members(tmp_path / "t.tar.gz", nested=True) is None  # compressed: left to the index pass


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root (CI runs as root)")
def test_plan_refuses_a_root_with_too_few_inodes_before_any_work(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    train = build_train(WNIDS[:4], files=12, size=(100, 200))
    archive = tmp_path / "nas" / "train.tar"
    archive.parent.mkdir()
    archive.write_bytes(train)
    with tmpfs(tmp_path / "fs", "50m", inodes=30) as root:
        m = write_manifest(tmp_path / "m.toml", root, f"""
[components.train]
source = "file"
path = "{archive}"
sha256 = "{sha256(train)}"
unpack = "class-tars"
into = "train"
""")
        assert cli.main(["plan", str(m)]) == 1
        out = capsys.readouterr().out
        assert "needs" in out and "53 inodes" in out and "DOES NOT FIT" in out, out  # 48 files, 4 classes, train/
        assert sorted(os.listdir(root)) == []  # plan wrote nothing, not even .datasetd
