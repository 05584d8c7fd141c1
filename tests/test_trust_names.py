"""Names as bytes: member names that are not valid UTF-8 are extracted and recorded losslessly.

A real class tar and a real flat tar whose member names hold Latin-1 bytes (what a tar made on an old
system carries); the tree is compared with GNU tar's extraction, the digest lists with `sha256sum -c`.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from conftest import (
    WNIDS,
    gnu_tar_extract,
    gnu_tar_reference,
    journal_units,
    make_tar,
    run_datasetd,
    sha256,
    tree_digest,
    write_manifest,
)

LATIN1 = os.fsdecode(b"caf\xe9.JPEG")  # not UTF-8: 'café' in Latin-1, held as a surrogate escape
MIXED = os.fsdecode(b"d\xffir/\\back\xfe.JPEG")  # a bad byte in a directory, a backslash in the file


def test_non_utf8_member_names_are_extracted_recorded_and_verified(tmp_path: Path) -> None:
    classes = {w: make_tar([(LATIN1, b"one" * 300), (MIXED, b"two" * 200), ("ok.JPEG", b"three")])
               for w in WNIDS[:2]}
    train = make_tar([(f"{w}.tar", data) for w, data in classes.items()])
    val = make_tar([(LATIN1, b"val" * 100), ("plain.JPEG", b"plain")])
    root = tmp_path / "root"
    (root / "sources").mkdir(parents=True)
    (root / "sources/train.tar").write_bytes(train)
    (root / "sources/val.tar").write_bytes(val)
    manifest = write_manifest(tmp_path / "m.toml", root, f"""
[components.train]
source = "file"
path = "sources/train.tar"
sha256 = "{sha256(train)}"
unpack = "class-tars"
into = "train"

[components.val]
source = "file"
path = "sources/val.tar"
unpack = "tar"
into = "val"
""")
    first = run_datasetd("apply", str(manifest))
    assert first.returncode == 0 and "Traceback" not in first.stderr, first.stderr
    assert tree_digest(root / "train") == gnu_tar_reference(root / "sources/train.tar", tmp_path / "gnu")
    assert tree_digest(root / "val") == tree_digest(gnu_tar_extract(root / "sources/val.tar", tmp_path / "gv"))
    assert os.path.exists(os.fsencode(root / "train" / WNIDS[0]) + b"/caf\xe9.JPEG")
    assert journal_units(root, "verified", "train") == set(WNIDS[:2]), "a class folder was left unrecorded"
    for lst, cwd in ((f"train/{WNIDS[0]}.sha256", root / "train"), ("val/val.sha256", root / "val")):
        check = subprocess.run(["sha256sum", "--strict", "-c", str(root / ".datasetd/sha256" / lst)], cwd=cwd,
                               capture_output=True)
        assert check.returncode == 0, check.stdout + check.stderr
        assert b"caf\xe9.JPEG: OK" in check.stdout
    assert run_datasetd("verify", str(manifest)).returncode == 0
    again = run_datasetd("--log-format", "json", "apply", str(manifest))
    assert again.returncode == 0 and "class.extracted" not in again.stderr, "the second apply redid work"
