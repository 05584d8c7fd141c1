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

import hashlib
import os
import signal
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
    class_archive,
    class_files,
    compress,
    device,
    directory,
    expansion,
    fifo,
    files,
    gzip_cut_points,
    hardlink,
    journal,
    longname_bomb,
    member_offsets,
    raw_header,
    regular,
    snapshot,
    symlink,
    tar,
    tree,
    unit_states,
    zeros_bomb,
)

GOOD = {"aaa": class_files("aaa"), "zzz": class_files("zzz", 4)}  # one class before the hostile one, one after
GOOD_FLAT = {"readme.txt": b"a flat tar that must converge next to a hostile one\n"}
LONG_PATH = "/".join(["d" * 99] * 41)  # 4099 bytes, every component legal


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return Site.create(tmp_path)


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


# ---- truncated archives --------------------------------------------------------------------------


def three_classes() -> bytes:
    before, after = good_class_tars()
    return class_archive({"aaa.tar": before, "bbb.tar": tar(files(class_files("bbb", 8))), "zzz.tar": after})


def train_manifest(site: Site, path: Path, **pins: object) -> None:
    site.write_manifest({"train": {"source": "file", "path": str(path), "unpack": "class-tars", "into": "train",
                                   **pins}})


CUTS = [("mid-class-tar-data", 512 + 512 + 300), ("mid-class-tar-header", 512 + 100), ("mid-outer-header", 100)]


@pytest.mark.parametrize("into_bbb", [c[1] for c in CUTS], ids=[c[0] for c in CUTS])
def test_archive_cut_inside_a_member_is_refused_before_any_write(site: Site, into_bbb: int) -> None:
    outer = three_classes()
    path = site.archive("train.tar", outer[:member_offsets(outer)[1] + into_bbb])
    train_manifest(site, path)
    before = outside_view(site, "train")
    result = apply(site)
    assert result.code == 1, f"a truncated archive was accepted:\n{result.stderr[-2000:]}"
    assert str(path) in result.error("train") and "truncated" in result.error("train")
    assert outside_view(site, "train") == before
    assert not (site.root / "train").exists()


@pytest.mark.parametrize("terminated", [False, True], ids=["cut", "cut-and-re-terminated"])
def test_archive_cut_at_a_member_boundary_is_caught_by_its_sha256_pin(site: Site, terminated: bool) -> None:
    """Re-terminated (end-of-archive blocks appended after the cut), the archive is a well-formed tar
    of fewer classes: only the pin can tell. Without them, a pin catches it too."""
    outer = three_classes()
    path = site.archive("train.tar", outer[:member_offsets(outer)[1]] + (b"\0" * 1024 if terminated else b""))
    train_manifest(site, path, sha256=hashlib.sha256(outer).hexdigest())
    before = outside_view(site, "train")
    result = apply(site)
    assert result.code == 1
    assert str(path) in result.error("train")
    if terminated:
        assert "sha256" in result.error("train")
    assert outside_view(site, "train") == before
    assert not (site.root / "train").exists()
    assert journal(site, "SELECT count(*) FROM unit_index") == [(0,)]


def test_archive_cut_at_a_member_boundary_without_a_pin_is_refused_for_its_missing_end(site: Site) -> None:
    """A tar ends with two zero blocks: one cut between members lacks them, so even unpinned it is refused."""
    outer = three_classes()
    train_manifest(site, site.archive("train.tar", outer[:member_offsets(outer)[1]]))
    result = apply(site)
    assert result.code == 1
    assert "end-of-archive" in result.error("train")
    assert not (site.root / "train").exists()


def test_archive_cut_and_re_terminated_without_a_pin_converges_on_what_is_left(site: Site) -> None:
    """What datasetd cannot know: a tar cut between two members and given new end-of-archive blocks
    is a well-formed, shorter tar. Without a pin it converges on the classes before the cut and warns
    `archive.unpinned` with the digest it read, for the user to compare and pin."""
    outer = three_classes()
    cut = outer[:member_offsets(outer)[1]] + b"\0" * 1024
    train_manifest(site, site.archive("train.tar", cut))
    result = apply(site)
    assert result.code == 0, result.stderr[-2000:]
    assert sorted(os.listdir(site.root / "train")) == ["aaa"]
    assert [e["sha256"] for e in result.events("archive.unpinned")] == [hashlib.sha256(cut).hexdigest()]


def test_a_wrong_size_pin_fails_that_component_only(site: Site) -> None:
    outer = three_classes()
    path = site.archive("train.tar", outer[:member_offsets(outer)[1]])
    good = site.archive("good.tar", tar(files(GOOD_FLAT)))
    site.write_manifest({"train": {"source": "file", "path": str(path), "unpack": "class-tars", "into": "train",
                                   "size": len(outer)},
                         "good": {"source": "file", "path": str(good), "unpack": "tar", "into": "good"}})
    result = apply(site)
    assert result.code == 1
    assert str(len(outer)) in result.error("train")
    assert str(len(outer)) in (result.last_error("train") or ""), "status.json does not say why train failed"
    assert tree(site.root / "good") == GOOD_FLAT, "one component's bad pin stopped another"
    assert not (site.root / "train").exists()


FLAT_CUTS = [
    ("mid-member-data", ".tar", lambda t: t[:member_offsets(t)[2] + 600]),
    ("mid-header", ".tar", lambda t: t[:member_offsets(t)[2] + 100]),
    ("gzip-cut-mid-stream", ".tar.gz", lambda t: compress(t, "gz")[:len(compress(t, "gz")) // 2]),
    ("gzip-without-trailer", ".tar.gz", lambda t: compress(t, "gz")[:-8]),
    # Decodes to exactly the first two members, then the stream stops: four files silently missing.
    ("gzip-cut-between-members", ".tar.gz", lambda t: _gzip_cut_after(t, 2)),
]


def _gzip_cut_after(archive: bytes, members: int) -> bytes:
    offsets = member_offsets(archive)
    data, cuts = gzip_cut_points(archive[a:b] for a, b in zip(offsets, [*offsets[1:], len(archive)], strict=True))
    return data[:cuts[members - 1]]


@pytest.mark.parametrize(("suffix", "cut"), [c[1:] for c in FLAT_CUTS], ids=[c[0] for c in FLAT_CUTS])
def test_truncated_flat_tar_is_refused(site: Site, suffix: str, cut: Callable[[bytes], bytes]) -> None:
    path = flat_site(site, "val" + suffix, cut(tar(files(class_files("v", 6)))))
    check_refused_flat(site, str(path))


# ---- decompression bombs and resource exhaustion ------------------------------------------------


BOMBS = [("gz", 16 << 20, 1), ("xz", 64 << 20, 1), ("xz", 1 << 20, 40)]


@pytest.mark.parametrize(("kind", "member_bytes", "members"), BOMBS, ids=["gz", "xz", "xz-many-members"])
def test_decompression_bomb_is_refused_at_index_time(site: Site, kind: str, member_bytes: int, members: int) -> None:
    """datasetd refuses a flat tar that expands beyond 1000x its size, at the member that crosses it."""
    bomb = zeros_bomb(kind, member_bytes, members)
    if expansion(bomb, kind) <= 1000 * len(bomb):
        pytest.skip(f"this {kind} library does not reach 1000:1 on zeros")  # deflate's ceiling is ~1030:1
    crossing = next(i for i in range(members) if (i + 1) * member_bytes > 1000 * len(bomb))
    flat_site(site, f"val.tar.{kind}", bomb)
    check_refused_flat(site, f"'zeros{crossing:03d}.bin'", "bomb")


def test_flat_member_claiming_10e12_bytes_is_refused_at_index_time(site: Site) -> None:
    flat_site(site, "val.tar", tar([Member("huge.bin", b"x" * 100, size=10**12)]))
    check_refused_flat(site, "'huge.bin'")


LIMITED_APPLY = """
import resource, sys
from datasetd import cli
vm = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmSize"))
limit = vm + int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))  # forked workers inherit it
sys.exit(cli.main(["--log-format", "json", "apply", sys.argv[1]]))
"""


def test_huge_gnu_longname_record_is_refused_without_reading_it_into_memory(site: Site) -> None:
    """A 2 MB .tar.gz whose first header is a 512 MiB GNU longname: the name must be refused, not read.
    Address space is capped 400 MiB above the interpreter's; the `good` component proves that is enough."""
    flat_site(site, "val.tar.gz", longname_bomb(512 << 20))
    before = outside_view(site, "val", "good")
    proc = subprocess.run([sys.executable, "-c", LIMITED_APPLY, str(site.manifest), str(400 << 20)],
                          capture_output=True, text=True, timeout=120)
    assert tree(site.root / "good") == GOOD_FLAT, f"the capped run failed on a normal tar:\n{proc.stderr[-2000:]}"
    assert proc.returncode == 1
    assert "MemoryError" not in proc.stderr, "the worker ran out of memory reading a tar header"
    assert "refused" in proc.stderr
    assert outside_view(site, "val", "good") == before
    assert not (site.root / "val").exists()


def test_error_messages_stay_short_whatever_the_member_name(site: Site) -> None:
    """A 16 KiB member name must not become a 16 KiB line in stderr, status.json and the journal."""
    flat_site(site, "val.tar", tar([regular("x" * (16 << 10))]))
    line = check_refused_flat(site, "refused", "member 'xxxxxxxx")
    assert len(line) < 4096, f"a {len(line)}-character error line"


def test_class_tar_member_claiming_10e16_bytes_is_refused_promptly(site: Site) -> None:
    """Without a bounds check the index pass skips the claimed size 1 MiB at a time (10**10 empty reads).
    A bounded wait, not a speed test: the refusal needs a few reads, the unbounded skip takes hours."""
    class_site(site, tar([Member("huge.JPEG", b"x" * 100, size=10**16)]))
    proc = subprocess.Popen([str(Path(sys.executable).with_name("datasetd")), "--log-format", "json", "apply",
                             str(site.manifest)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # its own session: the apply and its workers only
        proc.communicate()
        pytest.fail("apply was still indexing a 100-byte class tar after 20 s (claimed size 10**16)")
    assert proc.returncode == 1
    assert "'huge.JPEG'" in stderr


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
