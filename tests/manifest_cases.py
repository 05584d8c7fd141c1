"""A valid manifest touching every table and source kind, and the checks bad-manifest tests share."""

from __future__ import annotations

import contextlib
import copy
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings

from datasetd import cli
from hostile import snapshot, toml_document, toml_key

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
