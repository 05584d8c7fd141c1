"""Bad manifests (issue 8): always exit 2 with `<file>: <key.path>: problem`, never a traceback, never a write.

Hypothesis mutates one thing in a valid manifest (every component kind, every table) per example, in
one category per test: wrong types, unknown keys, missing keys, numbers out of range, odd unicode,
`after` cycles, system roots, paths escaping root, overlapping targets, bad digests. Each example
runs the real `datasetd plan` in this process and checks its stderr and the whole working tree;
a few run `datasetd apply` as a subprocess. `plan` on the valid base manifest writes nothing either.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from datasetd import cli
from hostile import regular, snapshot, tar, toml_document, toml_key

Doc = dict[str, Any]
MAX_INT = 2**63 - 1
TEN_YEARS = 10 * 365 * 86400
SETTINGS = settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
SYSTEM_DIRS = ["bin", "boot", "dev", "etc", "lib", "lib64", "proc", "run", "sbin", "sys", "usr", "var"]


def base(root: str) -> Doc:
    """A valid manifest touching every table and source kind."""
    return {
        "version": 1,
        "root": root,
        "daemon": {"workers": 2, "reconcile_every": "10m", "deep_verify_every": "7d", "stop_timeout": 30},
        "torrent": {"dht": False, "trackers": [], "stall_timeout": "30m",
                    "seed_after_download": {"ratio": 1.5, "time": "1h"}},
        "components": {
            "train": {"source": "file", "path": "sources/train.tar", "unpack": "class-tars", "into": "train",
                      "sha256": "ab" * 32, "md5": "cd" * 16, "size": 1024},
            "val": {"source": "file", "path": "sources/val.tar", "unpack": "tar", "into": "val", "after": ["train"]},
            "dl": {"source": "http", "url": "http://127.0.0.1:9/x.tar", "file": "downloads/x.tar",
                   "mirrors": ["http://127.0.0.1:9/y.tar"], "connections": 4, "stall_timeout": "60s"},
            "tor": {"source": "torrent", "torrent": "magnet:?xt=urn:btih:" + "0" * 40, "file": "x/y.tar",
                    "save_path": "torrents"},
        },
    }


@dataclass(frozen=True)
class Work:
    dir: Path

    @property
    def manifest(self) -> Path:
        return self.dir / "manifest.toml"

    @property
    def root(self) -> str:
        return str(self.dir / "root")

    def doc(self) -> Doc:
        return base(self.root)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Work:
    return Work(tmp_path_factory.mktemp("manifests"))


def plan(path: Path) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(["plan", str(path)])
    return code, err.getvalue()


def check_refused(work: Work, doc: Doc, keys: set[str]) -> None:
    """exit 2, `<file>: <one of keys>: ...` on stderr, and not one byte changed in the working tree."""
    work.manifest.write_text(toml_document(doc), encoding="utf-8")
    before = snapshot(work.dir, [])
    code, err = plan(work.manifest)
    assert code == 2, f"exit {code} for a manifest that should be refused at {sorted(keys)}:\n{err}"
    assert "Traceback" not in err
    prefixes = [f"datasetd: error: {work.manifest}: {key}: " for key in keys]
    assert any(err.startswith(p) for p in prefixes), f"expected a key path in {sorted(keys)}, got:\n{err[:500]}"
    assert snapshot(work.dir, []) == before, "an invalid manifest changed the disk"


def spellings(table: str, name: str) -> set[str]:
    """The key path of an odd name: as written, or quoted (TOML, JSON or Python style) so it stays one line."""
    prefix = f"{table}." if table else ""
    quoted = {toml_key(name), json.dumps(name), json.dumps(name, ensure_ascii=False), repr(name)}
    return {prefix + name} | {prefix + q for q in quoted}


def at(doc: Doc, key: str) -> tuple[dict[str, Any], str]:
    """The table holding dotted `key`, and the key's last part."""
    *tables, last = key.split(".")
    for name in tables:
        doc = doc[name]
    return doc, last


def setting(doc: Doc, key: str, value: object) -> Doc:
    out = copy.deepcopy(doc)
    table, last = at(out, key)
    table[last] = value
    return out


def test_the_base_manifest_is_valid_and_plan_writes_nothing(work: Work) -> None:
    work.manifest.write_text(toml_document(work.doc()), encoding="utf-8")
    before = snapshot(work.dir, [])
    code, err = plan(work.manifest)
    assert code == 0, err
    assert snapshot(work.dir, []) == before
    assert not Path(work.root).exists()


# ---- values ----------------------------------------------------------------------------------

scalars = st.one_of(st.integers(min_value=-(2**70), max_value=2**70), st.floats(), st.booleans(),
                    st.text(max_size=12), st.dates())
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                      max_leaves=5)


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


WRONG: dict[str, Any] = {  # kind -> values that are never of that kind
    "int": values.filter(lambda v: not _is_int(v)),
    "str": values.filter(lambda v: not isinstance(v, str)),
    "bool": values.filter(lambda v: not isinstance(v, bool)),
    "table": values.filter(lambda v: not isinstance(v, dict)),
    "strings": values.filter(lambda v: not (isinstance(v, list) and all(isinstance(x, str) for x in v))),
    "duration": values.filter(lambda v: isinstance(v, bool | list | dict) or type(v).__name__ == "date"),
    "number": values.filter(lambda v: isinstance(v, bool | str | list | dict) or type(v).__name__ == "date"),
}
TYPED = {
    "int": ["version", "daemon.workers", "components.train.size", "components.dl.connections",
            "components.dl.segment_threshold", "torrent.download_rate_limit", "torrent.upload_rate_limit"],
    "str": ["root", "daemon.metrics", "components.train.source", "components.train.path", "components.train.unpack",
            "components.train.into", "components.train.sha256", "components.train.md5", "components.dl.url",
            "components.dl.file", "components.tor.torrent", "components.tor.file", "torrent.listen_interfaces"],
    "bool": ["components.train.enabled", "components.train.keep_archive", "torrent.dht", "torrent.lsd",
             "torrent.upnp", "torrent.natpmp", "torrent.utp"],
    "table": ["daemon", "torrent", "components", "components.train", "components.tor",
              "torrent.seed_after_download", "components.dl.auth"],
    "strings": ["components.val.after", "torrent.trackers", "torrent.peers", "components.dl.mirrors",
                "components.tor.web_seeds"],
    "duration": ["daemon.reconcile_every", "daemon.deep_verify_every", "daemon.stop_timeout", "torrent.stall_timeout",
                 "components.dl.stall_timeout", "torrent.seed_after_download.time"],
    "number": ["torrent.seed_after_download.ratio"],
}


@st.composite
def wrong_types(draw: st.DrawFn) -> tuple[str, object]:
    kind = draw(st.sampled_from(sorted(TYPED)))
    return draw(st.sampled_from(TYPED[kind])), draw(WRONG[kind])


@SETTINGS
@given(wrong_types())
def test_wrong_type(work: Work, case: tuple[str, object]) -> None:
    key, value = case
    check_refused(work, setting(work.doc(), key, value), {key})


COMMON = {"source", "size", "sha256", "md5", "unpack", "into", "after", "enabled", "keep_archive"}
KNOWN = {  # table -> the keys it may hold (manifest.py), for generating keys it may not
    "": {"version", "root", "daemon", "torrent", "components"},
    "daemon": {"workers", "reconcile_every", "deep_verify_every", "stop_timeout", "metrics"},
    "torrent": {"listen_interfaces", "dht", "lsd", "upnp", "natpmp", "utp", "download_rate_limit",
                "upload_rate_limit", "trackers", "dht_bootstrap_nodes", "peers", "seed_after_download",
                "stall_timeout"},
    "torrent.seed_after_download": {"ratio", "time"},
    "components.train": COMMON | {"path"},
    "components.dl": COMMON | {"url", "mirrors", "file", "auth", "connections", "segment_threshold", "stall_timeout"},
    "components.tor": COMMON | {"torrent", "file", "save_path", "web_seeds", "mirrors"},
    "components.dl.auth": {"bearer_env", "user_env", "password_env"},
}
PRINTABLE_KEYS = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), min_size=1, max_size=12)


@st.composite
def unknown_keys(draw: st.DrawFn) -> tuple[str, str, object]:
    table = draw(st.sampled_from(sorted(KNOWN)))
    name = draw(PRINTABLE_KEYS.filter(lambda k: k not in KNOWN[table]))
    return table, name, draw(values)


@SETTINGS
@given(unknown_keys())
def test_unknown_key(work: Work, case: tuple[str, str, object]) -> None:
    table, name, value = case
    doc = work.doc()
    target = doc
    for part in table.split(".") if table else []:
        target = target.setdefault(part, {})
    target[name] = value
    check_refused(work, doc, spellings(table, name))


REQUIRED = ["version", "root", "components.train.source", "components.train.path", "components.val.into",
            "components.dl.url", "components.dl.file", "components.tor.torrent", "components.tor.file"]


@pytest.mark.parametrize("key", REQUIRED)
def test_missing_required_key(work: Work, key: str) -> None:
    doc = work.doc()
    table, last = at(doc, key)
    del table[last]
    check_refused(work, doc, {key})


def test_no_components(work: Work) -> None:
    doc = work.doc()
    doc["components"] = {}
    check_refused(work, doc, {"components"})
    del doc["components"]
    check_refused(work, doc, {"components"})


RANGED = {  # key -> integers outside its range
    "version": st.integers().filter(lambda v: v != 1),
    "daemon.workers": st.one_of(st.integers(max_value=0), st.integers(min_value=257)),
    "components.train.size": st.one_of(st.integers(max_value=-1), st.integers(min_value=MAX_INT + 1)),
    "components.dl.connections": st.one_of(st.integers(max_value=0), st.integers(min_value=33)),
    "components.dl.segment_threshold": st.one_of(st.integers(max_value=-1), st.integers(min_value=MAX_INT + 1)),
    "torrent.download_rate_limit": st.one_of(st.integers(max_value=-1), st.integers(min_value=MAX_INT + 1)),
    "torrent.upload_rate_limit": st.integers(max_value=-1),
}
DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")  # the documented grammar
bad_durations = st.one_of(
    st.floats(max_value=-1e-9), st.floats(min_value=TEN_YEARS + 1), st.just(float("nan")),
    st.integers(max_value=-1), st.integers(min_value=TEN_YEARS + 1, max_value=2**80),
    st.text(max_size=10).filter(lambda s: not DURATION_RE.match(s)),
    st.sampled_from(["3651d", "522w", "87601h", "-5s", "1e3s", "10 minutes", "inf", "nan", "1_000s"]))


@st.composite
def out_of_range(draw: st.DrawFn) -> tuple[str, object]:
    kind = draw(st.sampled_from(["int", "duration", "ratio"]))
    if kind == "int":
        key = draw(st.sampled_from(sorted(RANGED)))
        return key, draw(RANGED[key])
    if kind == "duration":
        return draw(st.sampled_from(TYPED["duration"])), draw(bad_durations)
    return "torrent.seed_after_download.ratio", draw(st.one_of(st.floats(max_value=-1e-9), st.sampled_from(
        [float("nan"), float("inf"), -1])))


@SETTINGS
@given(out_of_range())
def test_number_out_of_range(work: Work, case: tuple[str, object]) -> None:
    key, value = case
    check_refused(work, setting(work.doc(), key, value), {key})


# ---- odd unicode ------------------------------------------------------------------------------

CONTROL = st.sampled_from([chr(c) for c in range(32) if c != 9])
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")  # the documented component-name rule (fullmatch)


@st.composite
def with_control(draw: st.DrawFn) -> str:
    text = draw(st.text(max_size=10))
    at_ = draw(st.integers(0, len(text)))
    return text[:at_] + draw(CONTROL) + text[at_:]


STRING_KEYS = ["root", "components.train.path", "components.train.into", "components.dl.url", "components.dl.file",
               "components.tor.file", "daemon.metrics", "components.train.source", "components.train.unpack"]


@SETTINGS
@given(st.sampled_from(STRING_KEYS), with_control())
def test_control_character_in_a_string(work: Work, key: str, value: str) -> None:
    check_refused(work, setting(work.doc(), key, value), {key})


LOOKALIKES = ["ｔａｒ", "tar\u200b", "TAR", "class_tars", "Class-Tars", "fiIe", "file ", " file", "ﬁle", "tar\u0301"]


@SETTINGS
@given(st.sampled_from([("components.train.unpack", ("none", "tar", "class-tars")),
                        ("components.train.source", ("file", "http", "torrent"))]),
       st.one_of(st.sampled_from(LOOKALIKES), st.text(max_size=10)))
def test_keyword_lookalike(work: Work, key_options: tuple[str, tuple[str, ...]], value: str) -> None:
    key, options = key_options
    if value not in options:
        check_refused(work, setting(work.doc(), key, value), {key})


@SETTINGS
@given(st.text(max_size=70).filter(lambda n: not NAME_RE.fullmatch(n)))
@example("train\n")  # `$` in a pattern used with match() lets a trailing newline through
def test_component_name_outside_its_alphabet(work: Work, name: str) -> None:
    doc = work.doc()
    doc["components"][name] = {"source": "file", "path": "sources/other.tar"}
    check_refused(work, doc, spellings("components", name))


@pytest.mark.parametrize(("table", "name"), [("components.train", "pa\nth"), ("components.train", "a\rb"),
                                           ("", "")], ids=["newline", "carriage-return", "empty-top-level"])
def test_error_names_an_odd_key_on_one_line(work: Work, table: str, name: str) -> None:
    """`Every message is one line naming the key`: a quoted TOML key may hold a newline, a carriage
    return (which rewrites the terminal line) or nothing at all."""
    doc = work.doc()
    target = doc
    for part in table.split(".") if table else []:
        target = target[part]
    target[name] = "x"
    work.manifest.write_text(toml_document(doc), encoding="utf-8")
    code, err = plan(work.manifest)
    assert code == 2
    assert err.endswith("\n") and not re.search(r"[\x00-\x1f]", err[:-1]), f"control characters: {err!r}"
    assert re.match(rf"datasetd: error: {re.escape(str(work.manifest))}: \S.*: unknown key", err), err


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
