"""Truncated archives, decompression bombs and headers that try to exhaust memory or time (issue 8).

Same rules as test_hostile_archives.py: a real `datasetd apply`, a clear error naming the archive or
member, nothing written, the rest converges."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from hostile import (
    Member,
    Site,
    apply,
    class_archive,
    class_files,
    compress,
    expansion,
    files,
    gzip_cut_points,
    journal,
    longname_bomb,
    member_offsets,
    regular,
    tar,
    tree,
    zeros_bomb,
)
from hostile_checks import (
    GOOD_FLAT,
    check_refused_flat,
    class_site,
    flat_site,
    good_class_tars,
    outside_view,
)

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


@pytest.mark.parametrize("kind", ["gz", "bz2", "xz"])
def test_damaged_compressed_data_is_refused(site: Site, kind: str) -> None:
    """Whole but damaged: the decoder's own error (isal's, lzma's, bz2's OSError) is the archive's one line."""
    data = bytearray(compress(tar(files(class_files("v", 6))), kind))
    middle = len(data) // 2
    data[middle:middle + 64] = b"\xff" * 64
    flat_site(site, f"val.tar.{kind}", bytes(data))
    check_refused_flat(site, "unreadable compressed data")


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
