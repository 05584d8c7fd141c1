"""Shared checks of the hostile-archive suites: what must hold after datasetd refuses something."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from hostile import (
    Site,
    apply,
    class_archive,
    class_files,
    files,
    journal,
    snapshot,
    tar,
    tree,
    unit_states,
)

GOOD = {"aaa": class_files("aaa"), "zzz": class_files("zzz", 4)}  # one class before the hostile one, one after
GOOD_FLAT = {"readme.txt": b"a flat tar that must converge next to a hostile one\n"}
LONG_PATH = "/".join(["d" * 99] * 41)  # 4099 bytes, every component legal


def good_class_tars() -> tuple[bytes, bytes]:
    return tar(files(GOOD["aaa"])), tar(files(GOOD["zzz"]))


def class_site(site: Site, hostile_tar: bytes, name: str = "evil") -> None:
    before, after = good_class_tars()
    path = site.archive("train.tar", class_archive({"aaa.tar": before, f"{name}.tar": hostile_tar, "zzz.tar": after}))
    site.write_manifest({"train": {"source": "file", "path": str(path), "unpack": "class-tars", "into": "train"}})


def outside_view(site: Site, *intos: str) -> dict[str, tuple[str, int, str]]:
    return snapshot(site.tmp, [site.root / i for i in intos] + [site.state])


def flat_site(site: Site, name: str, data: bytes) -> Path:
    """Component `val` (flat, from `data`) beside component `good`, which must converge whatever `val` does."""
    path = site.archive(name, data)
    good = site.archive("good.tar", tar(files(GOOD_FLAT)))
    site.write_manifest({"val": {"source": "file", "path": str(path), "unpack": "tar", "into": "val"},
                         "good": {"source": "file", "path": str(good), "unpack": "tar", "into": "good"}})
    return path


def check_refused_flat(site: Site, *needles: str) -> str:
    """apply: exit 1, val's error holds every needle, nothing of val anywhere, good converged. The error."""
    before = outside_view(site, "val", "good")
    result = apply(site)
    assert result.code == 1, f"apply accepted a hostile or broken flat tar:\n{result.stderr[-3000:]}"
    line = result.error("val")
    assert all(n in line for n in needles), f"the error lacks one of {[n[:80] for n in needles]}: {line[:500]}"
    assert outside_view(site, "val", "good") == before, "something was written outside root/val, root/good"
    assert not (site.root / "val").exists(), "a refused flat tar left files in its directory"
    assert unit_states(site, "val") == {}
    assert tree(site.root / "good") == GOOD_FLAT, "a refused component stopped another"
    return line


def check_good_classes(site: Site) -> None:
    into = site.root / "train"
    for name, expected in GOOD.items():
        assert tree(into / name) == expected, f"class {name} is not byte for byte its tar"
        listing = (site.state / "sha256" / "train" / f"{name}.sha256").read_text()
        assert listing == "".join(f"{hashlib.sha256(d).hexdigest()}  {name}/{n}\n" for n, d in sorted(expected.items()))
    states = unit_states(site, "train")
    assert {n: states.get(n) for n in GOOD} == dict.fromkeys(GOOD, "verified")


def check_refused_class(site: Site, before: dict[str, tuple[str, int, str]], unit: str, member: str) -> None:
    result = apply(site)
    assert result.code == 1, f"apply accepted a hostile class tar:\n{result.stderr[-3000:]}"
    line = result.error("train")
    assert repr(member)[:60] in line, f"the error does not name member {member!r}: {line[:500]}"
    assert repr(member)[:60] in (result.last_error("train") or ""), "status.json last_error does not name it"
    assert outside_view(site, "train") == before, "something was written outside root/train and root/.datasetd"
    assert sorted(os.listdir(site.root / "train")) == sorted(GOOD), "a refused class left a folder or .partial"
    assert unit not in unit_states(site, "train"), "the refused class has a journal row"
    assert journal(site, "SELECT count(*) FROM file WHERE unit=?", unit) == [(0,)]
    assert not (site.state / "sha256" / "train" / f"{unit}.sha256").exists()
    check_good_classes(site)
