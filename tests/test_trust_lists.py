"""Issue 12's smaller items: a deleted `sha256sum -c` list, an extra empty directory in a class folder.

A deleted list under .datasetd/sha256/ is named by `verify` and written again by `apply`, byte for
byte as the extraction wrote it. An empty directory the archive did not have is named by `verify`
like an extra file, and `apply` repairs the folder as it does for an extra file (replaced from its
archive); an empty directory the archive itself holds is never reported.
"""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

import pytest

from conftest import WNIDS, Dataset, sha256, write_manifest

UNIT = WNIDS[4]


def _verify(dataset: Dataset, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    capsys.readouterr()
    code = dataset.run("verify")
    return code, [line for line in capsys.readouterr().out.splitlines() if line.startswith("BAD ")]


@pytest.mark.parametrize("component, name", [("train", f"{UNIT}.sha256"), ("val", "val.sha256")],
                         ids=["class-list", "flat-list"])
def test_a_deleted_digest_list_is_named_by_verify_and_rewritten_by_apply(
        dataset: Dataset, capsys: pytest.CaptureFixture[str], component: str, name: str) -> None:
    assert dataset.run("apply") == 0
    lists = dataset.root / ".datasetd" / "sha256" / component
    written = (lists / name).read_bytes()
    (lists / name).unlink()
    code, bad = _verify(dataset, capsys)
    assert code == 1
    assert len(bad) == 1 and str(lists / name) in bad[0] and "digest list missing" in bad[0], bad
    assert dataset.run("apply") == 0
    assert (lists / name).read_bytes() == written, "rewritten byte for byte from the journal"
    check = subprocess.run(["sha256sum", "--quiet", "-c", str(lists / name)], cwd=dataset.root / component,
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert _verify(dataset, capsys) == (0, [])


def test_an_extra_empty_directory_in_a_class_folder_is_named_and_removed_by_apply(
        dataset: Dataset, capsys: pytest.CaptureFixture[str]) -> None:
    assert dataset.run("apply") == 0
    stray = dataset.root / "train" / UNIT / "stray" / "deeper"
    stray.mkdir(parents=True)
    code, bad = _verify(dataset, capsys)
    assert code == 1
    assert bad == [f"BAD {stray.parent}: not in the archive (unexpected directory)"], bad  # the top of the tree
    before = len(dataset.steps())
    assert dataset.run("apply") == 0
    assert not stray.parent.exists(), "the folder is repaired from its archive, as for an extra file"
    assert next(a for _c, u, a, _o in dataset.steps()[before:] if u == UNIT) == "ExtractUnit"
    assert _verify(dataset, capsys) == (0, [])


def test_an_empty_directory_the_archive_holds_is_not_extra(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for name, data in (("docs/readme.txt", b"hello\n"), ("data/a.bin", b"\x00" * 700)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name in ("cache", "data/empty"):
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            tf.addfile(info)
    data = buf.getvalue()
    root = tmp_path / "root"
    (root / "src").mkdir(parents=True)
    (root / "src" / "kit.tar").write_bytes(data)
    manifest = write_manifest(tmp_path / "m.toml", root, f"""
[components.kit]
source = "file"
path = "src/kit.tar"
sha256 = "{sha256(data)}"
unpack = "tar"
into = "kit"
""")
    dataset = Dataset(root, manifest, root / "src" / "kit.tar", root / "src" / "kit.tar", data, data)
    assert dataset.run("apply") == 0
    assert (root / "kit" / "cache").is_dir() and (root / "kit" / "data" / "empty").is_dir()
    assert _verify(dataset, capsys) == (0, [])
    before = len(dataset.steps())
    assert dataset.run("apply") == 0
    assert [a for _c, _u, a, _o in dataset.steps()[before:]] == [], "a no-op: nothing repaired"
    (root / "kit" / "data" / "stray").mkdir()
    code, bad = _verify(dataset, capsys)
    assert code == 1 and bad == [f"BAD {root / 'kit' / 'data' / 'stray'}: not in the archive (unexpected directory)"]
