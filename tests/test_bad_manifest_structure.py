"""Bad manifest structure (issue 8): `after` cycles, system roots, paths escaping root, overlapping
targets, bad digests, archives inside a replaced directory, and the installed program end to end.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hostile import regular, snapshot, tar, toml_document
from manifest_cases import (
    SETTINGS,
    SYSTEM_DIRS,
    Doc,
    Work,
    check_refused,
    plan,
    setting,
)

# ---- structure: after-cycles, roots, escaping paths, overlapping targets, digests ---------------


@st.composite
def cycles(draw: st.DrawFn) -> tuple[Doc, set[str]]:
    """n components whose `after` lists close a loop (n = 1: depends on itself), plus innocent ones."""
    names = draw(st.lists(st.from_regex(r"[a-z][a-z0-9_-]{0,8}", fullmatch=True), min_size=1, max_size=5,
                          unique=True).filter(lambda ns: not set(ns) & {"train", "val", "dl", "tor"}))
    order = draw(st.permutations(names))
    comps: Doc = {n: {"source": "file", "path": f"sources/{n}.tar"} for n in names}
    for a, b in zip(order, [*order[1:], order[0]], strict=True):
        comps[a]["after"] = [b, *draw(st.lists(st.sampled_from(["train", "val", "dl"]), max_size=2, unique=True))]
    return comps, {f"components.{n}.after" for n in names}


@SETTINGS
@given(cycles())
def test_after_cycle(work: Work, case: tuple[Doc, set[str]]) -> None:
    comps, keys = case
    doc = work.doc()
    doc["components"].update(comps)
    check_refused(work, doc, keys)


@SETTINGS
@given(st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=8))
def test_after_unknown_component(work: Work, name: str) -> None:
    doc = work.doc()
    if name in doc["components"]:
        return
    doc["components"]["val"]["after"] = ["train", name]
    check_refused(work, doc, {"components.val.after"})


@st.composite
def system_roots(draw: st.DrawFn, depth: int) -> str:
    """`/`, a system directory, or a path that normalizes to one (relative ones climb out of the manifest's dir)."""
    top = draw(st.sampled_from(["", *SYSTEM_DIRS]))
    style = draw(st.sampled_from(["plain", "slashes", "dots", "detour", "relative"]))
    if style == "plain":
        return "/" + top
    if style == "slashes":  # exactly two leading slashes is its own case: test_double_slash_root
        return "/" * draw(st.sampled_from([1, 3, 4])) + top + ("/" * draw(st.integers(0, 3)) if top else "")
    if style == "dots":
        return "/./" + top + "/."
    if style == "detour":
        return f"/{draw(st.sampled_from(SYSTEM_DIRS))}/../{top}"
    return "../" * (depth + draw(st.integers(0, 3))) + top


@SETTINGS
@given(st.data())
def test_system_root(work: Work, data: st.DataObject) -> None:
    root = data.draw(system_roots(len(work.dir.parts)))
    marker = Path(root if root.startswith("/") else "/") / ".datasetd"
    existed = marker.exists()
    check_refused(work, setting(work.doc(), "root", root), {"root"})
    assert marker.exists() == existed


@pytest.mark.parametrize("root", ["//", "//etc", "//usr/"])
def test_double_slash_root(work: Work, root: str) -> None:
    """POSIX lets `//` differ from `/`, so pathlib keeps it; on Linux it is the same directory."""
    check_refused(work, setting(work.doc(), "root", root), {"root"})


SEGMENT = st.text(st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="/."), min_size=1,
                  max_size=8)


@st.composite
def escaping(draw: st.DrawFn, root: str) -> tuple[str, str]:
    """A path key and a value that leaves root, lands in .datasetd, or (for `into`) is root itself."""
    key = draw(st.sampled_from(["components.val.into", "components.train.path", "components.dl.file",
                                "components.tor.save_path", "components.tor.file"]))
    seg = draw(SEGMENT)
    ups = "../" * draw(st.integers(1, 4))
    choices = [ups + seg, f"{seg}/../../{seg}", "   "]
    if key != "components.tor.save_path":  # save_path = "" means the default, "downloads"
        choices.append("")
    if key == "components.tor.file":
        choices = [ups + seg, f"{seg}/../../{seg}", "/" + seg, f"{root}/{seg}"]  # relative to the torrent
    elif key != "components.train.path":  # a file source may name any absolute path; the others may not
        choices += ["/" + seg, f"/tmp/{seg}", ".datasetd", f".datasetd/{seg}", f"./{seg}/../.datasetd/x",
                    f"{root}/.datasetd/{seg}"]
    else:
        choices += [".datasetd", f".datasetd/{seg}"]
    if key == "components.val.into":
        choices += [".", "./", f"{seg}/..", root]
    return key, draw(st.sampled_from(choices))


@SETTINGS
@given(st.data())
def test_path_escaping_root(work: Work, data: st.DataObject) -> None:
    key, value = data.draw(escaping(work.root))
    check_refused(work, setting(work.doc(), key, value), {key})


@st.composite
def overlaps(draw: st.DrawFn) -> tuple[dict[str, str], str]:
    """Two components writing into the same or nested places; the later one in the file is named."""
    base_dir = draw(st.from_regex(r"[a-z]{1,6}", fullmatch=True))
    sub = draw(st.from_regex(r"[a-z]{1,6}", fullmatch=True))
    first, second = draw(st.sampled_from([(base_dir, base_dir), (base_dir, f"{base_dir}/{sub}"),
                                          (f"{base_dir}/{sub}", base_dir), (base_dir, f"./{base_dir}/")]))
    later = draw(st.sampled_from([("components.val.into", "components.dl.file"),
                                  ("components.val.into", "components.tor.save_path"),
                                  ("components.dl.file", "components.tor.save_path")]))
    return {"components.train.into": first, later[0]: second}, later[0]


@SETTINGS
@given(overlaps())
def test_overlapping_targets(work: Work, case: tuple[dict[str, str], str]) -> None:
    changes, key = case
    doc = work.doc()
    for path, value in changes.items():
        doc = setting(doc, path, value)
    check_refused(work, doc, {key})


HEX = "0123456789abcdefABCDEF"


@st.composite
def bad_digests(draw: st.DrawFn) -> tuple[str, str]:
    key, length = draw(st.sampled_from([("components.train.sha256", 64), ("components.train.md5", 32),
                                        ("components.dl.sha256", 64), ("components.tor.md5", 32)]))
    wrong_length = st.text(st.sampled_from(HEX), max_size=80).filter(lambda t: len(t) != length)
    non_hex = st.tuples(st.text(st.sampled_from(HEX), min_size=length - 1, max_size=length - 1),
                        st.characters(blacklist_characters=HEX, blacklist_categories=("Cs", "Cc")),
                        st.integers(0, length - 1)).map(lambda t: t[0][:t[2]] + t[1] + t[0][t[2]:])
    fixed = st.sampled_from(["sha256:" + "a" * 64, "0x" + "a" * 62, "٠" * length, "ａ" * length,
                             " " + "a" * (length - 1)])
    return key, draw(st.one_of(wrong_length, non_hex, fixed))


@SETTINGS
@given(bad_digests())
def test_bad_digest(work: Work, case: tuple[str, str]) -> None:
    key, value = case
    check_refused(work, setting(work.doc(), key, value), {key})


@pytest.mark.parametrize("text", [b"version = 1\nroot = \n", b"version = 1\nversion = 1\n", b"[a\n",
                                  b"version = 1\nroot = \"\xff\xfe\"\n", b"\x00"],
                         ids=["no-value", "duplicate-key", "bad-table", "not-utf8", "nul"])
def test_not_toml(work: Work, text: bytes) -> None:
    """Before any key exists, the message names the file and what is wrong with it."""
    work.manifest.write_bytes(text)
    before = snapshot(work.dir, [])
    code, err = plan(work.manifest)
    assert code == 2
    assert err.startswith(f"datasetd: error: {work.manifest}: ") and err.count("\n") == 1, err
    assert snapshot(work.dir, []) == before


# ---- a file archive inside a directory datasetd replaces -----------------------------------------


@pytest.mark.parametrize(("component", "path"), [("val", "val/val.tar"), ("val", "train/val.tar"),
                                                 ("train", "val/sub/train.tar"), ("train", "train/aaa/t.tar")],
                         ids=["own-flat-into", "other-into", "below-other-into", "inside-a-class-folder"])
def test_file_archive_inside_an_into_directory(work: Work, component: str, path: str) -> None:
    """datasetd replaces `into` (flat) or `into/CLASS` wholesale: an archive kept there is deleted with it."""
    check_refused(work, setting(work.doc(), f"components.{component}.path", path),
                  {f"components.{component}.path"})


def test_archive_inside_its_own_into_is_not_deleted(tmp_path: Path) -> None:
    """End to end, what the manifest check above prevents: the user's only copy of the archive is lost."""
    archive = tmp_path / "root" / "val" / "val.tar"
    archive.parent.mkdir(parents=True)
    archive.write_bytes(tar([regular("a.JPEG", b"a")]))
    manifest = tmp_path / "manifest.toml"
    manifest.write_text(toml_document({"version": 1, "root": str(tmp_path / "root"), "components": {
        "val": {"source": "file", "path": "val/val.tar", "unpack": "tar", "into": "val"}}}))
    proc = subprocess.run([str(Path(sys.executable).with_name("datasetd")), "apply", str(manifest)],
                          capture_output=True, text=True, timeout=120)
    assert archive.exists(), f"apply (exit {proc.returncode}) deleted the archive it was given"
    assert proc.returncode == 2


# ---- the installed program ---------------------------------------------------------------------

APPLY_CASES = {  # name -> key, value, the key paths the error may name
    "system-root": ("root", "/", {"root"}),
    "escaping-into": ("components.val.into", "../elsewhere", {"components.val.into"}),
    "cycle": ("components.train.after", ["val"], {"components.train.after", "components.val.after"}),
    "unknown-key": ("components.train.sha265", "ab" * 32, {"components.train.sha265"}),
    "huge-workers": ("daemon.workers", 10**30, {"daemon.workers"}),
}


@pytest.mark.parametrize("case", sorted(APPLY_CASES))
def test_apply_subprocess_refuses_before_touching_anything(tmp_path: Path, case: str) -> None:
    key, value, keys = APPLY_CASES[case]
    work = Work(tmp_path)
    work.manifest.write_text(toml_document(setting(work.doc(), key, value)), encoding="utf-8")
    before = snapshot(tmp_path, [])
    proc = subprocess.run([str(Path(sys.executable).with_name("datasetd")), "apply", str(work.manifest)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    one_line = rf"datasetd: error: {re.escape(str(work.manifest))}: ({'|'.join(map(re.escape, keys))}): [^\n]+\n"
    assert re.fullmatch(one_line, proc.stderr), proc.stderr
    assert proc.stdout == ""
    assert snapshot(tmp_path, []) == before
