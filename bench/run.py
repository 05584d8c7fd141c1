"""`make bench`: datasetd against the tools a user would otherwise reach for (see bench/README.md).

Settings come from the command line or, for `make bench`, from the environment:
DATASETD_BENCH_DIR, _FS (loop|host), _REPS, _ROWS, _CLASSES, _FILES, _FILE_KB, _SMALL_FILES,
_SMALL_CLASSES, _WORKERS, _CACHE (cold|warm).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import benchfs
import gen
import measure
import report
import rows_lab
import rows_net
import rows_noop
import rows_unpack

BENCH = Path(__file__).resolve().parent
GB = 1e9
MARGIN = 5 * 10**9  # left free on the host filesystem whatever the bench needs
IMAGE_MARGIN = 5 * 10**8  # left free inside the bench's own ext4, which is sized for the rows already
NOOP_CLASSES = 1000


def parse(argv: list[str]) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    p.add_argument("--dir", type=Path, default=Path(env("DATASETD_BENCH_DIR", "/var/tmp/datasetd-bench")),
                   help="where data sets and work trees go (outside the repository)")
    p.add_argument("--fs", choices=("loop", "host"), default=env("DATASETD_BENCH_FS", "loop"),
                   help="loop: measure on the bench's own journalled ext4 (an image in DIR, mounted at DIR/fs); "
                        "host: on DIR's own filesystem")
    p.add_argument("--reps", type=int, default=int(env("DATASETD_BENCH_REPS", "3")))
    p.add_argument("--rows", default=env("DATASETD_BENCH_ROWS", "1,2,3,4,5,6,7,8"),
                   help="comma list of rows; 1 and 2 share their runs, 6 needs 1 and 5")
    p.add_argument("--noop-files", type=int, default=int(env("DATASETD_BENCH_NOOP_FILES", "1000000")),
                   help="row 8: files in the converged tree the no-op apply checks")
    p.add_argument("--classes", type=int, default=int(env("DATASETD_BENCH_CLASSES", "100")))
    p.add_argument("--files", type=int, default=int(env("DATASETD_BENCH_FILES", "100")), help="per class")
    p.add_argument("--file-kb", type=int, default=int(env("DATASETD_BENCH_FILE_KB", "100")), help="mean file size")
    p.add_argument("--small-files", type=int, default=int(env("DATASETD_BENCH_SMALL_FILES", "100000")))
    p.add_argument("--small-classes", type=int, default=int(env("DATASETD_BENCH_SMALL_CLASSES", "200")))
    p.add_argument("--workers", type=int, default=int(env("DATASETD_BENCH_WORKERS", "2")))
    p.add_argument("--cache", choices=("cold", "warm"), default=env("DATASETD_BENCH_CACHE", "cold"))
    p.add_argument("--out", type=Path, default=BENCH / "results.json")
    return p.parse_args(argv)


def specs(args: argparse.Namespace) -> tuple[gen.Spec, gen.Spec]:
    mean = args.file_kb * 1000
    large = gen.Spec("large", args.classes, args.files, mean * 6 // 10, mean * 14 // 10)
    per_class = max(1, args.small_files // args.small_classes)
    small = gen.Spec("small", args.small_classes, per_class, 1000, 4096)
    return large, small


def budget(home: Path, margin: int, large: gen.Spec, small: gen.Spec, rows: set[str]) -> gen.Spec:
    """Fit the large set to the free space where the data sets and work trees go, or refuse with the numbers."""
    free = shutil.disk_usage(_existing(home)).free

    def need(spec: gen.Spec) -> int:
        to_generate = 0 if (home / "data" / spec.key / "done.json").exists() else 2 * spec.approx_tar_bytes()
        return to_generate + spec.approx_tar_bytes() + spec.approx_tree_bytes()  # two-stage copy + tree

    small_need = need(small) if rows & {"5", "6"} else 0
    spec = large
    while spec.classes > 10 and need(spec) + small_need + margin > free:
        spec = _halved(spec)
    if need(spec) + small_need + margin > free:
        sys.exit(f"bench: {home}: {free / GB:.1f} GB free, the smallest run needs "
                 f"{(need(spec) + small_need + margin) / GB:.1f} GB (incl. {margin / GB:.1f} GB margin); "
                 "free space or set DATASETD_BENCH_DIR to a bigger filesystem")
    if spec != large:
        print(f"bench: only {free / GB:.1f} GB free under {home}: large set cut to {spec.classes} classes",
              file=sys.stderr)
    return spec


def image_need(args: argparse.Namespace, large: gen.Spec, small: gen.Spec) -> benchfs.Need:
    """The bench's ext4 holds every data set of these settings (whichever rows run now: it is kept for the
    next run) and, at any moment, one work tree: the largest is the large set's two-stage copy + tree, or
    row 8's million empty files (directory blocks and datasetd's journal, ~0.5 KB a file).

    Inodes: the largest tree, and no fewer than an archive's worst case (a file per 512-byte
    header): while an archive is being proved datasetd starts only the units whose worst case fits
    the free inodes, which a user's disk (16 KiB an inode, mke2fs's default) always has for a
    1 GB archive; an image with fewer would hold the extraction back where no user's disk would."""
    noop_tar = args.noop_files * 512 + NOOP_CLASSES * 11 * 1024  # headers only; one padded class tar each
    data = 2 * (large.approx_tar_bytes() + small.approx_tar_bytes()) + noop_tar  # outer tar + split classes
    work = max(s.approx_tar_bytes() + s.approx_tree_bytes() for s in (large, small))
    work = max(work, args.noop_files * 512)
    tree_files = max(args.noop_files + NOOP_CLASSES, large.total_files, small.total_files)
    worst_case = max(large.approx_tar_bytes(), small.approx_tar_bytes(), noop_tar) // 512 + NOOP_CLASSES
    inodes = int(max(tree_files, worst_case) * 1.1) + large.classes + small.classes + 65536  # + state, spare
    return benchfs.Need(data + work, inodes)


def fit_image(args: argparse.Namespace, large: gen.Spec, small: gen.Spec) -> gen.Spec:
    """Cut the large set until its image, once fully written, leaves MARGIN free on the host; or refuse."""
    spec = large
    while (why := benchfs.host_shortfall(args.dir, image_need(args, spec, small), MARGIN)) and spec.classes > 10:
        spec = _halved(spec)
    if why:
        sys.exit(f"{why}; free space, set DATASETD_BENCH_DIR to a bigger filesystem, or run with --fs host")
    if spec != large:
        print(f"bench: the host under {args.dir} holds no bigger image: large set cut to {spec.classes} classes",
              file=sys.stderr)
    return spec


def _halved(spec: gen.Spec) -> gen.Spec:
    return gen.Spec(spec.name, spec.classes // 2, spec.files, spec.min_size, spec.max_size, spec.seed)


def _existing(path: Path) -> Path:
    while not path.exists():
        path = path.parent
    return path


def machine(home: Path) -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem = next((int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal")), 0)
    fs = benchfs.describe(home)
    # The disk under it: for the bench's own ext4, the one holding its image.
    under = fs["loop"]["backing_file"] if "loop" in fs else str(home)
    disk = subprocess.run(["findmnt", "-no", "SOURCE", "-T", under], capture_output=True, text=True).stdout.strip()
    rota = subprocess.run(["lsblk", "-no", "ROTA", disk], capture_output=True, text=True).stdout.strip()
    return {"nproc": os.cpu_count(), "cpu": cpu, "load_at_start": _load(), "ram_gb": round(mem / 2**20, 1),
            "kernel": platform.release(),
            "filesystem": fs["filesystem"], "device": fs["device"], "fs": fs,
            "disk": disk, "rotational": {"0": False, "1": True}.get(rota[:1]),
            "python": platform.python_version()}


def datasetd_under_test() -> dict[str, str]:
    """Which datasetd package the runs import (PYTHONPATH can point them at a patched copy)."""
    probe = subprocess.run([sys.executable, "-c", "import datasetd; print(datasetd.__version__); "
                            "print(datasetd.__file__)"], capture_output=True, text=True)
    version, _, path = probe.stdout.strip().partition("\n")
    return {"version": version, "package": str(Path(path).parent), "pythonpath": os.environ.get("PYTHONPATH", "")}


def compile_bytecode() -> None:
    """Write the bytecode of the datasetd package the runs import, as installing a wheel does.

    An editable install compiles its modules on first import and caches them, unless the
    environment says PYTHONDONTWRITEBYTECODE (CI images and some shells do): then every timed
    run compiled datasetd's ~60 modules again, ~0.15 s of each cold start, which no installed
    datasetd pays. compileall writes the caches whatever that variable says; runs still read them."""
    subprocess.run([sys.executable, "-c", "import compileall, datasetd, os; "
                    "compileall.compile_dir(os.path.dirname(datasetd.__file__), quiet=1)"], check=True)


def _load() -> str:
    """Load average and CPU pressure: other work on a shared machine shows up here, not in our runs."""
    psi = Path("/proc/pressure/cpu")
    cpu = psi.read_text().splitlines()[0] if psi.exists() else "n/a"
    return f"loadavg {Path('/proc/loadavg').read_text().split()[:3]}, cpu pressure {cpu}"


def main(argv: list[str]) -> int:
    args = parse(argv)
    rows_wanted = {r.strip() for r in args.rows.split(",") if r.strip()}
    args.dir.mkdir(parents=True, exist_ok=True)
    large_spec, small_spec = specs(args)
    # SIGTERM ends the run the way Ctrl-C does: through the finally blocks that unmount and detach.
    signal.signal(signal.SIGTERM, lambda _sig, _frame: sys.exit(128 + signal.SIGTERM))
    try:
        with benchfs.exclusive(args.dir), _filesystem(args, large_spec, small_spec) as (home, margin, large_spec):
            large_spec = budget(home, margin, large_spec, small_spec, rows_wanted)
            return bench(args, home, rows_wanted, large_spec, small_spec)
    except benchfs.BenchFsError as e:
        sys.exit(str(e))


@contextlib.contextmanager
def _filesystem(args: argparse.Namespace, large: gen.Spec,
                small: gen.Spec) -> Iterator[tuple[Path, int, gen.Spec]]:
    """Where data/ and work/ go for this run, the space to leave free there, and the large set that fits."""
    if args.fs == "host":
        yield args.dir, MARGIN, large
        return
    large = fit_image(args, large, small)
    with benchfs.mounted(args.dir, image_need(args, large, small), lambda s: print(s, flush=True)) as home:
        yield home, IMAGE_MARGIN, large


def bench(args: argparse.Namespace, home: Path, rows_wanted: set[str], large_spec: gen.Spec,
          small_spec: gen.Spec) -> int:
    cold = args.cache == "cold"
    if cold and not measure.can_drop_caches():
        print("bench: cannot write /proc/sys/vm/drop_caches (not root?): every run is warm-cache", file=sys.stderr)
        cold = False
    logs = args.dir / "logs"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    ctx = rows_unpack.Ctx(work=home / "work", logs=logs, reps=args.reps, cold=cold, workers=args.workers,
                          say=lambda s: print(s, flush=True))
    shutil.rmtree(ctx.work, ignore_errors=True)
    info = machine(home)
    compile_bytecode()
    fs = info["fs"]
    print(f"bench: {info['nproc']} CPUs ({info['cpu']}), {info['ram_gb']} GB RAM, {fs['filesystem']} "
          f"({'journal' if fs.get('journal') else 'no journal'}, {fs['mount_options']}) on {fs['device']} at "
          f"{home}; {args.reps} reps, {'cold' if cold else 'warm'} cache, logs in {logs}", flush=True)
    t0 = time.monotonic()
    large = _timed("generating the large set", lambda: gen.ensure(large_spec, home / "data"))
    small = _timed("generating the small set", lambda: gen.ensure(small_spec, home / "data")) \
        if rows_wanted & {"5", "6"} else None
    rows, projection = _run_rows(ctx, rows_wanted, large, small)
    if "8" in rows_wanted:
        ctx.say(f"row 8: no-op apply over {args.noop_files:,} files in {NOOP_CLASSES:,} classes")
        rows += rows_noop.noop_rows(ctx, home, args.noop_files, NOOP_CLASSES, args.reps, cold, logs)
    shutil.rmtree(ctx.work, ignore_errors=True)
    doc = {"when": datetime.now(UTC).isoformat(timespec="seconds"), "machine": info,
           "datasetd": datasetd_under_test(),
           "settings": {"reps": args.reps, "cache": "cold" if cold else "warm", "workers": args.workers,
                        "fs": args.fs,
                        "large": vars(large_spec) | {"tar_bytes": large.size, "files_total": large.files},
                        "small": (vars(small_spec) | {"tar_bytes": small.size, "files_total": small.files})
                        if small else None},
           "rows": rows, "projection_ilsvrc2012_train": projection,
           "wall_seconds": round(time.monotonic() - t0), "load_at_end": _load()}
    report.write_json(args.out, doc)
    print()
    print(report.table(rows))
    if projection:
        _print_projection(projection)
    print(f"\nresults: {args.out}  ({doc['wall_seconds']} s)")
    return 0


def _run_rows(ctx: rows_unpack.Ctx, wanted: set[str], large: gen.DataSet,
              small: gen.DataSet | None) -> tuple[list[report.Row], dict[str, Any] | None]:
    rows: list[report.Row] = []
    large_runs = small_runs = None
    if wanted & {"1", "2", "6"}:
        got, large_runs = rows_unpack.class_tars(ctx, large)
        rows += [r for r in got if r["name"][0] in wanted]
    if "3" in wanted:
        rows += rows_net.http_rows(ctx, large)
    if "4" in wanted:
        rows += rows_net.torrent_rows(ctx, large)
    if "7" in wanted:
        rows += rows_lab.lab_rows(ctx)
    if small is not None and wanted & {"5", "6"}:
        got, small_runs = rows_unpack.small_files(ctx, small)
        rows += got if "5" in wanted else []
    if "6" in wanted and small is not None:
        rows.append(rows_unpack.rss_row(large, large_runs and large_runs["datasetd-large"], small,
                                        small_runs and small_runs["datasetd-small"]))
    projection = None
    if large_runs and small_runs and small is not None:
        projection = rows_unpack.projection(large, large_runs, small, small_runs)
    return rows, projection


def _timed(what: str, fn: Callable[[], gen.DataSet]) -> gen.DataSet:
    t = time.monotonic()
    ds = fn()
    print(f"{what}: {ds.files:,} files, {ds.size / GB:.2f} GB at {ds.dir} ({time.monotonic() - t:.0f} s)",
          flush=True)
    return ds


def _print_projection(p: dict[str, Any]) -> None:
    print(f"\nprojection, ILSVRC2012 train ({p['files']:,} files, {p['bytes'] / GB:.1f} GB), this machine, "
          f"from the two sizes measured (time = a*files + b*bytes):")
    for what in ("datasetd apply", "two-stage GNU tar"):
        if what in p:
            v = p[what]
            print(f"  {what:<20} {v['minutes']:6.1f} min  ({v['us_per_file']} us/file, {v['mb_per_s']} MB/s)")
    print(f"  {'manual recipe':<20} {p['manual_recipe_step3']} for step 3 alone (reported on a home machine)")
    print("  (whole apply: index, extract, verify, commit. At full size the archive no longer fits in the page\n"
          "   cache: add one more read of 147.9 GB from disk for the extraction pass.)")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
