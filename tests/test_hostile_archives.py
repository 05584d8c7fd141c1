"""Hostile archives (issue 8): nothing escapes `into`, nothing refused counts as done, the rest converges.

Every test builds real tar bytes (tests/hostile.py) and runs the real `datasetd apply`: in this
process through cli.main (its workers are real forked processes), a few as subprocesses. Then:
- exit code 1, and the error (stderr line and status.json last_error) names the member;
- the whole tmp tree outside root/<into> and root/.datasetd is unchanged, byte for byte
  (`outside/` next to root is what the members aim at);
- the refused unit has no folder, no .partial, no journal row and no digest list;
- every well-behaved class is on disk byte for byte, recorded VERIFIED, with its digest list.
Then truncated archives, decompression bombs and headers that try to exhaust memory or time.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from hostile import (
    Member,
    Site,
    apply,
    device,
    directory,
    fifo,
    files,
    hardlink,
    journal,
    raw_header,
    regular,
    symlink,
    tar,
    tree,
    unit_states,
)
from hostile_checks import (
    GOOD,
    LONG_PATH,
    check_good_classes,
    check_refused_class,
    check_refused_flat,
    class_site,
    flat_site,
    good_class_tars,
    outside_view,
)

# ---- hostile members inside one class tar ------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    members: Callable[[Path], list[Member]]  # given the `outside` directory the members aim at
    member: str  # the member the error must name; "{outside}" is replaced by that directory

    def named(self, outside: Path) -> str:
        return self.member.replace("{outside}", str(outside))


HOSTILE = [
    Case("dotdot", lambda o: [regular("../../../outside/evil", b"evil")], "../../../outside/evil"),
    Case("dotdot-inside", lambda o: [regular("sub/../../evil", b"evil")], "sub/../../evil"),
    Case("absolute", lambda o: [regular(f"{o}/evil", b"evil")], "{outside}/evil"),
    Case("symlink-abs-then-write", lambda o: [symlink("link", str(o)), regular("link/evil")], "link"),
    Case("symlink-rel-then-write", lambda o: [symlink("link", "../../../outside"), regular("link/evil")], "link"),
    Case("symlink-then-overwrite", lambda o: [symlink("f.JPEG", f"{o}/sentinel.txt"), regular("f.JPEG", b"0wn")],
         "f.JPEG"),
    Case("hardlink-abs", lambda o: [hardlink("h.JPEG", f"{o}/sentinel.txt")], "h.JPEG"),
    Case("hardlink-rel-then-write", lambda o: [hardlink("h.JPEG", "../../../outside/sentinel.txt"),
                                               regular("h.JPEG", b"0wn")], "h.JPEG"),
    Case("char-device", lambda o: [device("null")], "null"),
    Case("block-device", lambda o: [device("sda", tarfile.BLKTYPE)], "sda"),
    Case("fifo", lambda o: [fifo("pipe")], "pipe"),
    Case("unknown-type", lambda o: [Member("odd.JPEG", b"data", type=b"Z", size=4)], "odd.JPEG"),
    Case("sparse", lambda o: [Member("s.JPEG", type=tarfile.GNUTYPE_SPARSE)], "s.JPEG"),
    Case("newline", lambda o: [regular("evil\nname.JPEG")], "evil\nname.JPEG"),
    Case("escape-sequence", lambda o: [regular("evil\x1b[2J.JPEG")], "evil\x1b[2J.JPEG"),
    Case("nul-in-pax-path", lambda o: [Member("x", b"x", pax={"path": "ok.JPEG\x00/../../evil"})],
         "ok.JPEG\x00/../../evil"),
    Case("component-256-bytes", lambda o: [regular("c" * 256)], "c" * 256),
    Case("component-256-bytes-utf8", lambda o: [regular("é" * 128)], "é" * 128),
    Case("path-4099-bytes-gnu", lambda o: [regular(LONG_PATH)], LONG_PATH),
    Case("path-4099-bytes-pax", lambda o: [Member("x", b"x", pax={"path": LONG_PATH})], LONG_PATH),
    Case("duplicate", lambda o: [regular("a.JPEG", b"1"), regular("a.JPEG", b"2")], "a.JPEG"),
    Case("duplicate-dot-slash", lambda o: [regular("a.JPEG", b"1"), regular("./a.JPEG", b"2")], "./a.JPEG"),
    Case("dir-and-file-same-name", lambda o: [directory("d"), regular("d")], "d"),
    # Index-clean (distinct names); only extraction finds that 'a' is a file: the second line of defence.
    Case("file-then-path-through-it", lambda o: [regular("a", b"1"), regular("a/b", b"2")], "a/b"),
    Case("claims-10e12-bytes", lambda o: [Member("huge.JPEG", b"x" * 100, size=10**12), regular("b.JPEG")],
         "huge.JPEG"),
    Case("mtime-beyond-time_t", lambda o: [regular("t.JPEG", mtime=10**20)], "t.JPEG"),
    Case("mtime-nan", lambda o: [Member("t.JPEG", b"t", pax={"mtime": "nan"})], "t.JPEG"),
    Case("mtime-inf", lambda o: [Member("t.JPEG", b"t", pax={"mtime": "inf"})], "t.JPEG"),
]


@pytest.mark.parametrize("case", HOSTILE, ids=[c.id for c in HOSTILE])
def test_hostile_class_is_refused_and_the_others_converge(site: Site, case: Case) -> None:
    class_site(site, tar(case.members(site.outside)))
    before = outside_view(site, "train")
    check_refused_class(site, before, "evil", case.named(site.outside))


FLAT_CASES = [c for c in HOSTILE if c.id in {
    "dotdot", "absolute", "symlink-abs-then-write", "hardlink-rel-then-write", "char-device", "fifo",
    "nul-in-pax-path", "path-4099-bytes-gnu", "duplicate", "file-then-path-through-it", "mtime-nan"}]


@pytest.mark.parametrize("case", FLAT_CASES, ids=[c.id for c in FLAT_CASES])
def test_hostile_flat_tar_is_refused_whole_and_other_components_converge(site: Site, case: Case) -> None:
    flat_site(site, "val.tar", tar([regular("first.JPEG", b"1"), *case.members(site.outside)]))
    check_refused_flat(site, repr(case.named(site.outside))[:60])


@pytest.mark.parametrize("case", [c for c in HOSTILE if c.id in {"symlink-abs-then-write", "claims-10e12-bytes"}],
                         ids=lambda c: c.id)
def test_a_refused_class_stays_refused_and_does_not_block_later_runs(site: Site, case: Case) -> None:
    """The second run says the same thing, and fails on nothing the refused class left behind
    (such as the size its header claimed, counted as space still needed)."""
    class_site(site, tar(case.members(site.outside)))
    before = outside_view(site, "train")
    first = apply(site)
    second = apply(site)
    assert (first.code, second.code) == (1, 1)
    assert second.error("train") == first.error("train"), "the second run failed for another reason"
    assert outside_view(site, "train") == before
    assert sorted(os.listdir(site.root / "train")) == sorted(GOOD)
    check_good_classes(site)


# ---- strange but harmless: accepted, and nothing leaves the class folder -----------------------


def test_nul_in_a_ustar_or_gnu_name_ends_the_name_and_the_rest_is_ignored(site: Site) -> None:
    """A NUL cannot survive in a ustar name field or a GNU longname: readers stop at it, so the member
    is the ordinary file before the NUL (only pax can carry a NUL; that case is refused above)."""
    longname = "n" * 150 + "\0/../../outside/evil"
    hostile = raw_header(b"ok.JPEG\0/../../outside/evil", 3) + b"abc".ljust(512, b"\0") + tar([regular(longname, b"l")])
    class_site(site, hostile, name="nul")
    before = outside_view(site, "train")
    result = apply(site)
    assert result.code == 0, result.stderr[-3000:]
    assert outside_view(site, "train") == before
    assert tree(site.root / "train" / "nul") == {"ok.JPEG": b"abc", "n" * 150: b"l"}
    check_good_classes(site)


def test_unexpected_but_legal_class_contents_are_extracted_as_they_are(site: Site) -> None:
    """Documented behaviour: a class tar is any well-formed tree. Subdirectories, dot files, empty
    directories, odd but legal names and a 255-byte component are kept; mode bits are not (0644)."""
    names = {"sub/deeper/x.JPEG": b"1", ".hidden": b"2", "...": b"3", "..JPEG": b"4", "a..b": b"5",
             " spaced name ": b"6", "-dash": b"7", "ü.JPEG": b"8", "c" * 255: b"9", "é" * 127: b"10"}
    members = [*files(names), directory("emptydir"), regular("setuid.JPEG", b"s", mode=0o7777)]
    class_site(site, tar(members), name="odd")
    before = outside_view(site, "train")
    result = apply(site)
    assert result.code == 0, result.stderr[-3000:]
    assert outside_view(site, "train") == before
    folder = site.root / "train" / "odd"
    assert tree(folder) == {**names, "setuid.JPEG": b"s"}
    assert (folder / "emptydir").is_dir()
    assert (folder / "setuid.JPEG").stat().st_mode & 0o7777 == 0o644 & ~_umask()
    assert unit_states(site, "train")["odd"] == "verified"


def test_an_empty_class_tar_becomes_an_empty_class_folder(site: Site) -> None:
    class_site(site, tar([]), name="empty")
    result = apply(site)
    assert result.code == 0, result.stderr[-3000:]
    assert list((site.root / "train" / "empty").iterdir()) == []
    assert unit_states(site, "train")["empty"] == "verified"


@pytest.mark.parametrize("data", [b"not a tar at all " * 40, b""], ids=["garbage", "zero-bytes"])
def test_a_class_tar_that_is_not_a_tar_is_refused_alone(site: Site, data: bytes) -> None:
    class_site(site, data, name="junk")
    before = outside_view(site, "train")
    result = apply(site)
    assert result.code == 1
    assert f"{site.sources / 'train.tar'}:junk.tar: " in result.error("train")
    assert outside_view(site, "train") == before
    assert sorted(os.listdir(site.root / "train")) == sorted(GOOD)
    check_good_classes(site)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ---- hostile members of the outer archive: the whole archive is refused before any write ---------


OUTER = [
    ("dotdot", lambda t: regular("../x.tar", t), "../x.tar"),
    ("absolute", lambda t: regular("/tmp/x.tar", t), "/tmp/x.tar"),
    ("in-a-subdirectory", lambda t: regular("sub/x.tar", t), "sub/x.tar"),
    ("dot-name", lambda t: regular(".x.tar", t), ".x.tar"),
    ("marker-name", lambda t: regular("Z_x.tar", t), "Z_x.tar"),
    ("not-a-tar-name", lambda t: regular("x.txt", t), "x.txt"),
    ("duplicate", lambda t: regular("aaa.tar", t), "aaa.tar"),
    ("symlink", lambda t: symlink("x.tar", "/etc/passwd"), "x.tar"),
    ("newline", lambda t: regular("x\n.tar", t), "x\n.tar"),
]


@pytest.mark.parametrize(("make", "member"), [c[1:] for c in OUTER], ids=[c[0] for c in OUTER])
def test_hostile_outer_member_refuses_the_whole_archive(site: Site, make: Callable[[bytes], Member],
                                                        member: str) -> None:
    before_tar, after_tar = good_class_tars()
    outer = tar([regular("aaa.tar", before_tar), make(before_tar), regular("zzz.tar", after_tar)])
    path = site.archive("train.tar", outer)
    site.write_manifest({"train": {"source": "file", "path": str(path), "unpack": "class-tars", "into": "train"}})
    before = outside_view(site, "train")
    result = apply(site)
    assert result.code == 1, result.stderr[-3000:]
    assert repr(member) in result.error("train")
    assert outside_view(site, "train") == before
    assert not (site.root / "train").exists(), "classes were extracted from an archive that was refused"
    assert journal(site, "SELECT count(*) FROM unit_index") == [(0,)]
    assert unit_states(site, "train") == {}



def test_console_script_end_to_end(site: Site) -> None:
    """The installed `datasetd` program, as a user runs it: exit 1, the member named, the rest done."""
    case = next(c for c in HOSTILE if c.id == "symlink-abs-then-write")
    class_site(site, tar(case.members(site.outside)))
    before = outside_view(site, "train")
    proc = subprocess.run([str(Path(sys.executable).with_name("datasetd")), "apply", str(site.manifest)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert next(line for line in proc.stderr.splitlines() if line.startswith("datasetd: train: ")).count("'link'") == 1
    assert outside_view(site, "train") == before
    assert sorted(os.listdir(site.root / "train")) == sorted(GOOD)
    check_good_classes(site)
