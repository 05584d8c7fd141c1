"""Profile one `datasetd apply` with py-spy (all processes) and summarise where the samples went.

usage: profile.py MANIFEST [OUT_DIR]       (py-spy is installed under $DATASETD_BENCH_DIR/tools,
       profile.py --summarise RAW          never into the project's venv)

Prints, per process, the samples spent in each leaf function (self) and in
each function anywhere on the stack (inclusive), with --idle so time blocked
in read/write/fsync shows up (py-spy counts a thread in a syscall as idle).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import baselines as bl
import benchfs

BASE = Path(os.environ.get("DATASETD_BENCH_DIR", "/var/tmp/datasetd-bench"))
TOOLS = BASE / "tools"


def py_spy() -> Path:
    exe = TOOLS / "bin" / "py-spy"
    if not exe.exists():
        subprocess.run([str(bl.PYTHON), "-m", "pip", "install", "-q", "--target", str(TOOLS), "py-spy"], check=True)
    return exe


def record(manifest: Path, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    raw = out / "profile.raw"
    with _bench_fs_for(manifest):
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        with (out / "datasetd.log").open("w") as log:
            subprocess.run([str(py_spy()), "record", "--idle", "-r", "200", "--subprocesses", "--format", "raw",
                            "-o", str(raw), "--", *bl.datasetd_apply(manifest)], stderr=log, check=True)
    return raw


def _bench_fs_for(manifest: Path) -> contextlib.AbstractContextManager[object]:
    """The last run's manifests point into the bench's own ext4 (DIR/fs): mounted for the profile if unmounted."""
    home = benchfs.home(BASE)
    if str(home) in manifest.read_text() and not os.path.ismount(home) and benchfs.image(BASE).exists():
        return benchfs.mounted(BASE, None, print)
    return contextlib.nullcontext()


def summarise(raw: Path, top: int = 25) -> str:
    self_t: dict[str, Counter[str]] = defaultdict(Counter)
    incl: dict[str, Counter[str]] = defaultdict(Counter)
    total: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        # With --subprocesses a forked worker's stack hangs below its parent's: the last
        # "process N" frame says whose stack the rest is.
        start = max(i for i, f in enumerate(frames) if f.startswith("process "))
        proc = frames[start].split(":")[0]
        n = int(count)
        total[proc] += n
        funcs = [_short(f) for f in frames[start + 1:]]
        if funcs:
            self_t[proc][funcs[-1]] += n
        for f in set(funcs):
            incl[proc][f] += n
    lines = []
    for proc, n in total.most_common():
        lines.append(f"== {proc}: {n} samples ({n / 200:.1f} s at 200 Hz)")
        lines.append("  self:")
        lines += [f"    {c / n * 100:5.1f}%  {f}" for f, c in self_t[proc].most_common(top)]
        lines.append("  inclusive:")
        lines += [f"    {c / n * 100:5.1f}%  {f}" for f, c in incl[proc].most_common(top)]
    return "\n".join(lines)


def _short(frame: str) -> str:
    """'func (path/to/mod.py:12)' -> 'func mod.py:12'."""
    func, _, where = frame.partition(" (")
    return f"{func} {where.rstrip(')').rsplit('/', 1)[-1]}"


if __name__ == "__main__":
    if sys.argv[1] == "--summarise":
        print(summarise(Path(sys.argv[2])))
    else:
        manifest = Path(sys.argv[1])
        print(summarise(record(manifest, Path(sys.argv[2]) if len(sys.argv) > 2 else manifest.parent / "profile")))
