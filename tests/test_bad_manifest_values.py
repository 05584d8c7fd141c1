"""Bad manifest values (issue 8): wrong types, unknown and missing keys, numbers out of range, odd unicode.

Hypothesis mutates one thing in a valid manifest per example; each runs the real `datasetd plan` in this
process: exit 2 with `<file>: <key.path>: problem`, never a traceback, never a write.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from hostile import snapshot, toml_document
from manifest_cases import (
    MAX_INT,
    SETTINGS,
    TEN_YEARS,
    Work,
    at,
    check_refused,
    plan,
    setting,
    spellings,
)


def test_the_base_manifest_is_valid_and_plan_writes_nothing(work: Work) -> None:
    work.manifest.write_text(toml_document(work.doc()), encoding="utf-8")
    before = snapshot(work.dir, [])
    code, err = plan(work.manifest)
    assert code == 1 and not err, err  # valid; plan says 1 because its file archives are not there (blocked)
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
KNOWN = {  # table -> the keys it may hold (config/parsing.py), for generating keys it may not
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
