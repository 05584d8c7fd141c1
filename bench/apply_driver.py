"""`datasetd apply` with the HTTP / torrent sources wired in even where the CLI does not wire them yet.

usage: apply_driver.py MANIFEST        (exit status as `datasetd apply`; JSON log on stderr)

Uses a source module's `make_source` (what the CLI's `default_sources` calls)
when it has one; otherwise builds HttpFetcher / TorrentFetcher directly, so the
bench measures the same fetch code either way.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

from datasetd import commands, logs
from datasetd.manifest import load


def sources(manifest: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    kinds = {type(c.source).__name__.removesuffix("Source").lower() for c in manifest.enabled()}
    for kind in sorted(kinds - {"file"}):
        module = importlib.import_module(f"datasetd.sources.{kind}")
        make = getattr(module, "make_source", None)  # what the CLI's default_sources calls
        if make is not None:
            out[kind] = make(manifest)
        elif kind == "http":
            out[kind] = module.HttpFetcher()
        elif kind == "torrent":
            out[kind] = module.TorrentFetcher(manifest.torrent, manifest.state_dir)
    return out


def main(path: str) -> int:
    logs.configure(json=True, level="info")
    manifest = load(path)
    srcs = sources(manifest)
    try:
        return commands.apply(manifest, sources=srcs)
    finally:
        for src in srcs.values():
            close = getattr(src, "close", None)
            if close is not None:
                close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
