"""Rows of results: built from runs, printed as a table, written to bench/results.json."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from measure import Run, Stats, stats

Row = dict[str, Any]


def _stats(runs: list[Run]) -> Stats:
    return stats([r.seconds for r in runs])


def _as_dict(s: Stats) -> dict[str, float | int]:
    return {"median": round(s.median, 3), "min": round(s.low, 3), "max": round(s.high, 3),
            "spread": round(s.spread, 3), "n": s.n}


def _rss_mb(runs: list[Run]) -> float:
    return round(max((r.rss_max_kb for r in runs), default=0) / 1024, 1)


def _extras(runs: list[Run]) -> dict[str, float]:
    keys = sorted({k for r in runs for k in r.extra})
    return {k: round(stats([r.extra[k] for r in runs if k in r.extra]).median, 3) for k in keys}


def compare_row(name: str, d: list[Run], b: list[Run], baseline: str, target: float | None,
                extra: dict[str, Any] | None = None) -> Row:
    ds, bs = _stats(d), _stats(b)
    ratio = ds.median / bs.median if bs.median else math.nan
    met = None if target is None else bool(ratio <= target)
    if extra and "scratch_met" in extra and met is not None:
        met = met and bool(extra["scratch_met"])
    return {"name": name, "kind": "ratio", "datasetd": _as_dict(ds), "baseline": _as_dict(bs),
            "baseline_name": baseline, "ratio": round(ratio, 3),
            "target": "info" if target is None else f"ratio <= {target}", "met": met,
            "peak_rss_mb": {"datasetd": _rss_mb(d), "baseline": _rss_mb(b)},
            "datasetd_phases_s": _extras(d), **(extra or {})}


def absolute_row(name: str, d: list[Run], limit_s: float) -> Row:
    ds = _stats(d)
    return {"name": name, "kind": "absolute", "datasetd": _as_dict(ds), "baseline": None, "ratio": None,
            "target": f"< {limit_s} s", "met": bool(ds.median < limit_s),
            "peak_rss_mb": {"datasetd": _rss_mb(d)}}


def pending_row(name: str, why: str) -> Row:
    return {"name": name, "kind": "pending", "target": "-", "met": None, "pending": why}


def _fmt_stats(s: dict[str, Any] | None) -> str:
    if not s:
        return f"{'-':>17}"
    return f"{s['median']:7.2f}s [{s['min']:.2f}-{s['max']:.2f}]"


def table(rows: list[Row]) -> str:
    head = f"{'row':<72} {'datasetd median [min-max]':>26} {'baseline':>26} {'ratio':>6} {'target':>14} met  RSS MB"
    lines = [head, "-" * len(head)]
    for row in rows:
        if row["kind"] == "pending":
            lines.append(f"{row['name'][:72]:<72} PENDING: {row['pending']}")
            continue
        if row["kind"] == "rss":
            for size, v in row["sizes"].items():
                lines.append(f"{(row['name'] if size == next(iter(row['sizes'])) else '')[:72]:<72} "
                             f"{size:>26} coordinator {v['coordinator_mb']} MB, worker {v['worker_mb']} MB, "
                             f"tree {v['tree_mb']} MB")
            lines.append(f"{'':<72} {'growth for 10x files':>26} {row['growth_10x_files']:>25}x {'':>6} "
                         f"{'< 150, flat':>14} {_yes(row['met'])}")
            continue
        ratio = "" if row["ratio"] is None else f"{row['ratio']:.2f}"
        rss = row["peak_rss_mb"]
        rss_s = f"{rss.get('datasetd', '-')}/{rss.get('baseline', '-')}"
        lines.append(f"{row['name'][:72]:<72} {_fmt_stats(row['datasetd']):>26} {_fmt_stats(row['baseline']):>26} "
                     f"{ratio:>6} {row['target']:>14} {_yes(row['met'])}  {rss_s}")
        if "copies" in row:
            lines.append(f"{'':<72}   the seeder sent {row['copies']:.2f} copies (median; each run: "
                         f"{', '.join(f'{c:.2f}' for c in row['copies_each'])})")
        if "scratch_peak_bytes" in row:
            lines.append(f"{'':<72}   peak scratch: datasetd {row['scratch_peak_bytes'] / 1e6:.1f} MB "
                         f"(limit {row['scratch_limit_bytes'] / 1e6:.1f} MB), two-stage "
                         f"{row['baseline_scratch_peak_bytes'] / 1e6:.1f} MB")
    return "\n".join(lines)


def _yes(met: bool | None) -> str:
    return {True: "yes", False: "NO ", None: " - "}[met]


def write_json(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    os.replace(tmp, path)
