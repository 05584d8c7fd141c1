"""Which transport serves which `source = "..."`: one table from kind to factory.

The executor and the daemon ask here for the sources a manifest needs; a kind's
module (and, for torrent, libtorrent) is imported only when a manifest uses it.
`file` needs no transport: the archive is already where the manifest says.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, MutableMapping

from datasetd import logs
from datasetd.config.manifest import Manifest
from datasetd.sources.base import Source

# kind -> module whose make_source(manifest) builds the one transport per process
FACTORIES: Mapping[str, str] = {
    "http": "datasetd.sources.http",
    "torrent": "datasetd.sources.torrent",
}


def needed_kinds(manifest: Manifest) -> set[str]:
    return {c.source.kind for c in manifest.enabled()} & set(FACTORIES)


def make_sources(manifest: Manifest, have: Mapping[str, Source] | None = None) -> dict[str, Source]:
    """The transports the manifest's enabled components need that `have` lacks."""
    out: dict[str, Source] = {}
    for kind in sorted(needed_kinds(manifest) - set(have or {})):
        factory: Callable[[Manifest], Source] = importlib.import_module(FACTORIES[kind]).make_source
        out[kind] = factory(manifest)
    return out


def add_sources(sources: MutableMapping[str, Source], manifest: Manifest) -> None:
    """Build transports once per process; an edit that brings a new kind builds only that one."""
    sources.update(make_sources(manifest, sources))


def close_sources(sources: Mapping[str, Source]) -> None:
    for kind, source in sources.items():
        close = getattr(source, "close", None)
        if callable(close):
            try:
                close()  # the torrent source saves resume data here
            except Exception as exc:  # noqa: BLE001 - one failing transport must not skip the others
                logs.get().warning("source.close_failed", source=kind, error=repr(exc))
