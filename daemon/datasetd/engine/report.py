"""Counts on disk against `expect`, and the acceptance report of `datasetd verify --report FILE`.

Sits after deep verification (commands.verify): the recorded files have just
been re-hashed; this counts what is on disk per class, checks the manifest's
expectations, reads every image's markers for odd files, and writes what a
user can cite: Markdown at FILE and the same as JSON at FILE with `.json`.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from datasetd.archive.imagecheck import IMAGE_SUFFIXES, odd_image
from datasetd.config.manifest import Component, Manifest
from datasetd.core import expect as expectations
from datasetd.state.durable import write_text_atomic
from datasetd.state.fswalk import list_files
from datasetd.state.journal import JournalDB


@dataclass
class ComponentReport:
    name: str
    archive: dict[str, Any]
    files: int = 0
    bytes: int = 0
    per_class: dict[str, int] = field(default_factory=dict)
    expect: dict[str, Any] | None = None
    expect_problems: list[str] = field(default_factory=list)
    odd_files: list[dict[str, str]] = field(default_factory=list)


def tree_counts(comp: Component) -> tuple[dict[str, int], int, int, dict[str, int]]:
    """(files per class, files, bytes, every file's size by name relative to `into`) as on disk now."""
    if comp.into is None or not comp.into.is_dir():
        return {}, 0, 0, {}
    listing = list_files(comp.into)
    files = {k: v for k, v in listing.files.items() if not any(p.startswith(".") for p in k.split("/"))}
    per_class: dict[str, int] = {}
    if comp.unpack == "class-tars" or comp.arrange is not None:
        for name in files:
            if "/" in name:
                cls = name.split("/", 1)[0]
                per_class[cls] = per_class.get(cls, 0) + 1
    return per_class, len(files), sum(files.values()), files


def expectation_problems(manifest: Manifest, names: list[str]) -> list[str]:
    """`expect` against the disk, one line per class or total that is off."""
    out: list[str] = []
    for name in names:
        comp = manifest.components[name]
        if comp.expect is None:
            continue
        per_class, files, _, _ = tree_counts(comp)
        out += [f"{name}: {p}" for p in expectations.problems(comp.expect, per_class, files)]
    return out


def build(manifest: Manifest, journal: JournalDB, names: list[str]) -> list[ComponentReport]:
    reports = []
    for name in names:
        comp = manifest.components[name]
        row = journal.archive(name)
        archive = {"path": str(comp.archive), "size": row.size if row else comp.size,
                   "sha256": row.sha256 if row else None, "md5": row.md5 if row else None,
                   "pinned_sha256": comp.sha256, "pinned_md5": comp.md5}
        per_class, files, size, sizes = tree_counts(comp)
        rep = ComponentReport(name=name, archive=archive, files=files, bytes=size, per_class=per_class)
        if comp.expect is not None:
            rep.expect = {k: v for k, v in asdict(comp.expect).items() if v is not None}
            rep.expect_problems = expectations.problems(comp.expect, per_class, files)
        if comp.into is not None:
            for rel in sorted(sizes):
                if rel.lower().endswith(IMAGE_SUFFIXES):
                    why = odd_image(comp.into / rel)
                    if why is not None:
                        rep.odd_files.append({"file": os.path.join(comp.into.name, rel), "problem": why})
        reports.append(rep)
    return reports


def write(path: Path, manifest: Manifest, reports: list[ComponentReport], problems: list[str]) -> Path:
    """Markdown at `path`, JSON beside it; both atomic (a reader never sees half a report)."""
    data = {"manifest": str(manifest.path), "manifest_sha256": manifest.sha256, "root": str(manifest.root),
            "generated": datetime.now(UTC).isoformat(timespec="seconds"),
            "verified": not problems, "problems": problems,
            "components": {r.name: asdict(r) for r in reports}}
    json_path = path.with_suffix(".json") if path.suffix != ".json" else path.with_suffix(".report.json")
    write_text_atomic(json_path, json.dumps(data, indent=2, sort_keys=True) + "\n")
    write_text_atomic(path, _markdown(data, reports))
    return json_path


def _markdown(data: dict[str, Any], reports: list[ComponentReport]) -> str:
    verdict = "every recorded file matches" if data["verified"] else f"{len(data['problems'])} problem(s)"
    lines = [f"# datasetd acceptance report: {data['root']}", "",
             f"- manifest: `{data['manifest']}` (sha256 `{data['manifest_sha256']}`)",
             f"- generated: {data['generated']}", f"- verify: {verdict}", ""]
    lines += [f"- {p}" for p in data["problems"]]
    for r in reports:
        a = r.archive
        lines += [f"## {r.name}", "", "| archive | bytes | sha256 | md5 |", "|---|---|---|---|",
                  f"| `{a['path']}` | {a['size'] or 0:,} | `{a['sha256']}` | `{a['md5']}` |", "",
                  f"{r.files:,} files, {r.bytes:,} bytes" + (f", {len(r.per_class):,} classes" if r.per_class
                                                             else ""), ""]
        if r.expect is not None:
            want = ", ".join(f"{k} = {v:,}" for k, v in r.expect.items())
            lines += [f"Expected: {want}: " + ("met" if not r.expect_problems else "**NOT MET**"), ""]
            lines += [f"- {p}" for p in r.expect_problems]
        if r.per_class:
            lines += ["", "| class | files |", "|---|---|"]
            lines += [f"| {w} | {n:,} |" for w, n in sorted(r.per_class.items())]
        lines += ["", f"Odd files: {len(r.odd_files)}", ""]
        lines += [f"- `{o['file']}`: {o['problem']}" for o in r.odd_files]
        lines.append("")
    return "\n".join(lines)
