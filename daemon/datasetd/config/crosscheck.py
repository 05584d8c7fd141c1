"""Manifest checks that need every component at once: the `after` graph, label sources, overlapping targets.

Run by config.parsing once each component's table is read on its own; each error names the
key path of the component that breaks the rule.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from datasetd.config.manifest import Component, FileSource, HttpSource
from datasetd.errors import ManifestError


def check_components(fname: str, comps: Mapping[str, Component]) -> None:
    """Every rule, in this order: the first one broken is the error reported."""
    _check_graph(fname, comps)
    _check_label_sources(fname, comps)
    _check_targets(fname, comps)
    _check_archives(fname, comps)


def _check_graph(fname: str, comps: Mapping[str, Component]) -> None:
    for c in comps.values():
        for dep in c.after:
            if dep not in comps:
                raise ManifestError(fname, f"components.{c.name}.after",
                                    f"unknown component {dep!r}",
                                    f"known: {', '.join(sorted(comps))}")
            if dep == c.name:
                raise ManifestError(fname, f"components.{c.name}.after", "depends on itself",
                                    "remove it from its own after list")
    state: dict[str, int] = {}

    def visit(name: str, trail: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = [*trail[trail.index(name):], name]
            raise ManifestError(fname, f"components.{name}.after",
                                "dependency cycle: " + " -> ".join(cycle),
                                "remove one of these after entries")
        state[name] = 1
        for dep in comps[name].after:
            visit(dep, [*trail, name])
        state[name] = 2

    for name in comps:
        visit(name, [])


def _check_label_sources(fname: str, comps: Mapping[str, Component]) -> None:
    for c in comps.values():
        kit = c.arrange.devkit if c.arrange is not None else None
        if kit is None:
            continue
        key = f"components.{c.name}.labels.devkit"
        if kit not in comps or comps[kit].into is None:
            raise ManifestError(fname, key, f"{kit!r} is no component with an into directory",
                                "name the component that unpacks the devkit")
        if kit not in c.after:
            raise ManifestError(fname, key, f"{kit!r} must be ready first", f'add after = ["{kit}"]')


def _check_targets(fname: str, comps: Mapping[str, Component]) -> None:
    """Two components may not write into the same or nested directories or archive files."""
    claimed: list[tuple[Path, str]] = []
    for c in comps.values():
        if c.into is not None:
            claimed.append((c.into, f"components.{c.name}.into"))
        if c.downloaded:
            claimed.append((c.archive, f"components.{c.name}.{_archive_key(c)}"))
    for i, (a, ka) in enumerate(claimed):
        for b, kb in claimed[:i]:
            if a == b or a.is_relative_to(b) or b.is_relative_to(a):
                raise ManifestError(fname, ka, f"{a} overlaps {kb} ({b})",
                                    "give every component its own directory and file")


def _check_archives(fname: str, comps: Mapping[str, Component]) -> None:
    """A file archive inside an `into` is deleted when that directory, or a class folder in it, is replaced."""
    for c in comps.values():
        if not isinstance(c.source, FileSource):
            continue
        for other in comps.values():
            if other.into is not None and c.archive.is_relative_to(other.into):
                raise ManifestError(fname, f"components.{c.name}.path",
                                    f"{c.archive} is inside components.{other.name}.into ({other.into}), "
                                    "which datasetd replaces", "keep archives outside every into directory")


def _archive_key(c: Component) -> str:
    return "file" if isinstance(c.source, HttpSource) else "save_path"
