"""Rows 1, 2, 5, 6 and the ILSVRC2012 projection: unpacking class tars, datasetd vs GNU tar and friends."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import baselines as bl
import measure
from gen import DataSet
from report import absolute_row, compare_row, pending_row

ILSVRC_FILES = 1_281_167
ILSVRC_BYTES = 147_900_000_000
RECIPE_STEP3 = "50-60 min"
FLAT = 1.25  # row 6: largest process at 100k files / at 10k files


class BenchError(RuntimeError):
    pass


@dataclass(frozen=True)
class Ctx:
    work: Path
    logs: Path
    reps: int
    cold: bool
    workers: int
    say: Callable[[str], None]


Variant = Callable[[int], dict[str, measure.Run]]


def rotate(ctx: Ctx, variants: dict[str, Variant]) -> dict[str, list[measure.Run]]:
    """Run every variant `reps` times, rotating the order so drift (cache, thermal) hits all alike."""
    runs: dict[str, list[measure.Run]] = {}
    names = list(variants)
    for rep in range(ctx.reps):
        order = names[rep % len(names):] + names[:rep % len(names)]
        for name in order:
            for label, r in variants[name](rep).items():
                runs.setdefault(label, []).append(r)
                ctx.say(f"  rep {rep + 1}/{ctx.reps} {label:<22} {r.seconds:8.2f}s  rss {r.rss_max_kb // 1024} MB")
    return runs


def fresh(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


# ---- variants --------------------------------------------------------------------------------


def datasetd_variant(ctx: Ctx, ds: DataSet, tag: str, noop: bool = False) -> Variant:
    def go(rep: int) -> dict[str, measure.Run]:
        work = fresh(ctx.work / f"datasetd-{tag}")
        root, manifest = work / "root", work / "bench.toml"
        manifest.write_text(bl.class_tars_manifest(ds, root, ctx.workers))
        shutil.copyfile(manifest, ctx.logs / f"datasetd-{tag}.toml")  # for bench/profile.py after the run
        into = root / "train"
        log = ctx.logs / f"datasetd-{tag}-{rep}.log"
        # Scratch: class tars outside the archive (loose in `into` or at the root): none expected.
        first = measure.run(f"datasetd-{tag}", bl.datasetd_apply(manifest), cold=ctx.cold, log=log,
                            scratch=measure.tar_bytes_in(into, root))
        _check(first, log, into, ds.files)
        first.extra.update(bl.phases(log))
        first.extra["state_bytes"] = measure.tree_bytes(root / ".datasetd")
        out = {f"datasetd-{tag}": first}
        if noop:
            for cold in (True, False):
                label = f"datasetd-{tag}-noop-{'cold' if cold else 'warm'}"
                nlog = ctx.logs / f"{label}-{rep}.log"
                out[label] = measure.run(label, bl.datasetd_apply(manifest), cold=cold, log=nlog)
                _check(out[label], nlog, None, 0)
        shutil.rmtree(work)
        return out
    return go


def shell_variant(ctx: Ctx, ds: DataSet, label: str, argv_for: Callable[[Path], list[str]],
                  scratch_in: bool = False) -> Variant:
    def go(rep: int) -> dict[str, measure.Run]:
        work = fresh(ctx.work / label)
        out = work / "out"
        log = ctx.logs / f"{label}-{rep}.log"
        r = measure.run(label, argv_for(out), cold=ctx.cold, log=log,
                        scratch=measure.tar_bytes_in(out) if scratch_in else None)
        _check(r, log, out, ds.files)
        shutil.rmtree(work)
        return {label: r}
    return go


def _check(r: measure.Run, log: Path, tree: Path | None, files: int) -> None:
    if r.rc != 0:
        raise BenchError(f"{r.label} exited with {r.rc}; see {log}")
    if tree is not None and (n := bl.count_files(tree)) != files:
        raise BenchError(f"{r.label} left {n} files in {tree}, expected {files}; see {log}")


# ---- rows ------------------------------------------------------------------------------------


def class_tars(ctx: Ctx, large: DataSet) -> tuple[list[dict[str, object]], dict[str, list[measure.Run]]]:
    """Rows 1 and 2 on the ~1 GB set."""
    ctx.say(f"rows 1-2: {large.files:,} files in {large.spec.classes} class tars, {large.size / 1e9:.2f} GB")
    runs = rotate(ctx, {
        "datasetd": datasetd_variant(ctx, large, "large"),
        "tar-parallel": shell_variant(ctx, large, "tar-parallel", lambda o: bl.parallel_tar(large, o, ctx.workers)),
        "tar-two-stage": shell_variant(ctx, large, "tar-two-stage", lambda o: bl.two_stage_tar(large, o),
                                       scratch_in=True),
        "python-recipe": shell_variant(ctx, large, "python-recipe", lambda o: bl.recipe_python(large, o)),
        "probe": shell_variant(ctx, large, "probe", lambda o: bl.floor_probe(large, o, ctx.workers, False)),
        "probe-digest": shell_variant(ctx, large, "probe-digest",
                                      lambda o: bl.floor_probe(large, o, ctx.workers, True)),
    })
    d = runs["datasetd-large"]
    tar_kb = large.class_tar_bytes
    rows = [
        compare_row("1 class-tars: datasetd apply vs parallel GNU tar (pre-split, xargs -P)", d,
                    runs["tar-parallel"], "GNU tar x workers on split class tars + sync", 1.0),
        compare_row("1b class-tars: vs two-stage sequential GNU tar (manual recipe)", d,
                    runs["tar-two-stage"], "tar outer; tar each class; sync", None),
        compare_row("1c class-tars: vs recipe-style Python (tarfile.extractall per class)", d,
                    runs["python-recipe"], "extractall per split class tar; sync", None),
        compare_row("1d class-tars: issue 15's probe (no journal, rules, archive digest) vs parallel GNU tar",
                    runs["probe"], runs["tar-parallel"], "GNU tar x workers on split class tars + sync", None),
        compare_row("1e class-tars: the probe + the archive's sha256 (the proof's floor) vs parallel GNU tar",
                    runs["probe-digest"], runs["tar-parallel"], "GNU tar x workers on split class tars + sync", None),
        compare_row("1f class-tars: datasetd apply vs the proof's floor (row 1e)", d, runs["probe-digest"],
                    "bench/floor_probe.py --digest", None),
        compare_row("2 streaming from the outer tar vs two-stage (no full copy)", d, runs["tar-two-stage"],
                    "tar outer; tar each class; sync", 1.1,
                    extra=_scratch(d, runs["tar-two-stage"], tar_kb, ctx.workers)),
    ]
    return rows, runs


def _scratch(d: list[measure.Run], b: list[measure.Run], class_tar: int, workers: int) -> dict[str, object]:
    peak = max(r.scratch_peak for r in d)
    limit = (workers + 2) * class_tar
    return {"scratch_peak_bytes": peak, "baseline_scratch_peak_bytes": max(r.scratch_peak for r in b),
            "scratch_limit_bytes": limit, "scratch_met": peak <= limit,
            "journal_bytes": max(int(r.extra.get("state_bytes", 0)) for r in d)}


def small_files(ctx: Ctx, small: DataSet) -> tuple[list[dict[str, object]], dict[str, list[measure.Run]]]:
    """Row 5: first apply of ~100k small files vs two-stage GNU tar, and the no-op apply."""
    ctx.say(f"row 5: {small.files:,} files in {small.spec.classes} class tars, {small.size / 1e6:.0f} MB")
    runs = rotate(ctx, {
        "datasetd": datasetd_variant(ctx, small, "small", noop=True),
        "tar-two-stage": shell_variant(ctx, small, "tar-two-stage-small", lambda o: bl.two_stage_tar(small, o)),
    })
    cache = "cold" if measure.can_drop_caches() else "warm (caches could not be dropped)"
    rows = [
        compare_row(f"5 first apply, {small.files:,} files <= 4 KB vs two-stage GNU tar", runs["datasetd-small"],
                    runs["tar-two-stage-small"], "tar outer; tar each class; sync", 2.0),
        absolute_row(f"5 no-op apply, converged tree of {small.files:,} files ({cache})",
                     runs["datasetd-small-noop-cold"], 2.0),
        absolute_row(f"5 no-op apply, converged tree of {small.files:,} files (warm)",
                     runs["datasetd-small-noop-warm"], 2.0),
    ]
    return rows, runs


def rss_row(large: DataSet, large_runs: list[measure.Run] | None, small: DataSet,
            small_runs: list[measure.Run] | None) -> dict[str, object]:
    name = "6 daemon RSS while unpacking (coordinator / largest worker), two sizes"
    if not large_runs or not small_runs:
        return pending_row(name, "needs rows 1 and 5")
    sizes = {}
    for ds, runs in ((large, large_runs), (small, small_runs)):
        sizes[f"{ds.files}_files"] = {
            "coordinator_mb": round(max(r.rss_top_kb for r in runs) / 1024, 1),
            "worker_mb": round(max(r.rss_other_kb for r in runs) / 1024, 1),
            "max_process_mb": round(max(r.rss_max_kb for r in runs) / 1024, 1),
            "tree_mb": round(max(r.rss_tree_kb for r in runs) / 1024, 1),
        }
    peaks = [v["max_process_mb"] for v in sizes.values()]
    lo, hi = sizes[f"{large.files}_files"], sizes[f"{small.files}_files"]
    growth = hi["max_process_mb"] / lo["max_process_mb"] if lo["max_process_mb"] else float("nan")
    # "Flat": 10x the files may cost at most a quarter more (allocator noise), not a per-file amount.
    return {"name": name, "kind": "rss", "target": f"< 150 MB per process at both sizes, <= {FLAT}x for 10x files",
            "met": max(peaks) < 150 and growth <= FLAT, "sizes": sizes,
            "growth_10x_files": round(growth, 2), "peak_rss_mb": {"datasetd": max(peaks)}}


def projection(large: DataSet, large_runs: dict[str, list[measure.Run]],
               small: DataSet, small_runs: dict[str, list[measure.Run]]) -> dict[str, object]:
    """time = a * files + b * bytes through the two measured sizes, extended to ILSVRC2012 train."""
    out: dict[str, object] = {"files": ILSVRC_FILES, "bytes": ILSVRC_BYTES, "manual_recipe_step3": RECIPE_STEP3}
    pairs = {"datasetd apply": ("datasetd-large", "datasetd-small"),
             "two-stage GNU tar": ("tar-two-stage", "tar-two-stage-small")}
    for what, (kl, ks) in pairs.items():
        t1 = measure.stats([r.seconds for r in large_runs[kl]]).median
        t2 = measure.stats([r.seconds for r in small_runs[ks]]).median
        f1, b1, f2, b2 = large.files, large.file_bytes, small.files, small.file_bytes
        det = f1 * b2 - f2 * b1
        if det == 0:
            continue
        per_file = (t1 * b2 - t2 * b1) / det
        per_byte = (f1 * t2 - f2 * t1) / det
        total = per_file * ILSVRC_FILES + per_byte * ILSVRC_BYTES
        out[what] = {"seconds": round(total), "minutes": round(total / 60, 1),
                     "us_per_file": round(per_file * 1e6, 1), "mb_per_s": round(1 / per_byte / 1e6, 1)
                     if per_byte > 0 else None}
    return out
