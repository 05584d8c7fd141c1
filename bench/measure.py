"""Running one timed command the same way for datasetd and for every baseline.

Each run is a fresh process tree under /usr/bin/time (its %M is the peak RSS
of the largest single process in the tree, because wait4 folds in waited-for
descendants). A sampler thread also reads /proc every SAMPLE seconds for the
peak RSS of the top process, of the whole tree, and for peak scratch bytes.
Caches are dropped before a cold run, after a `sync` so the previous run's
dirty pages are not charged to this one.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

SAMPLE = 0.2
PAGE = os.sysconf("SC_PAGE_SIZE")
_drop_ok: bool | None = None


def can_drop_caches() -> bool:
    global _drop_ok
    if _drop_ok is None:
        try:
            os.sync()
            Path("/proc/sys/vm/drop_caches").write_text("3\n")
            _drop_ok = True
        except OSError:
            _drop_ok = False
    return _drop_ok


def settle(cold: bool) -> None:
    """Flush what earlier steps left dirty; then, for a cold run, empty the page cache."""
    os.sync()
    if cold and can_drop_caches():
        Path("/proc/sys/vm/drop_caches").write_text("3\n")


@dataclass
class Run:
    label: str
    seconds: float
    rc: int
    rss_max_kb: int  # /usr/bin/time %M: the largest single process of the tree
    rss_top_kb: int = 0  # the command itself (datasetd's coordinator), sampled
    rss_tree_kb: int = 0  # every process of the tree together, sampled
    rss_other_kb: int = 0  # the largest process other than the top one (datasetd's workers), sampled
    scratch_peak: int = 0  # bytes, sampled
    extra: dict[str, float] = field(default_factory=dict)


def run(label: str, argv: Sequence[str], *, cold: bool, log: Path, cwd: Path | None = None,
        env: dict[str, str] | None = None, scratch: Callable[[], int] | None = None,
        timeout: float = 3600.0) -> Run:
    settle(cold)
    with tempfile.NamedTemporaryFile("r", prefix="bench-time-", suffix=".txt") as tfile, log.open("w") as out:
        cmd = ["/usr/bin/time", "-f", "%e %M", "-o", tfile.name, *argv]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        sampler = _Sampler(proc.pid, scratch)
        sampler.start()
        try:
            rc = proc.wait(timeout=timeout)
        finally:
            seconds = time.perf_counter() - t0
            sampler.stop()
            if proc.poll() is None:
                proc.kill()
        fields = (tfile.read().strip().splitlines() or ["0 0"])[-1].split()
    rss_max = int(fields[-1]) if fields and fields[-1].isdigit() else 0
    return Run(label, seconds, rc, rss_max, sampler.top_kb, sampler.tree_kb, sampler.other_kb, sampler.scratch)


class _Sampler(threading.Thread):
    def __init__(self, time_pid: int, scratch: Callable[[], int] | None) -> None:
        super().__init__(daemon=True)
        self.time_pid = time_pid
        self.scratch_fn = scratch
        self.top_kb = self.tree_kb = self.other_kb = self.scratch = 0
        self._halt = threading.Event()
        self._tree: dict[int, int] = {}
        self._seen: dict[int, int] = {}
        self._peak: dict[int, int] = {}
        self._samples = 0

    def stop(self) -> None:
        self._halt.set()
        self.join()
        self._sample()  # one last look: scratch left at the end counts too

    def run(self) -> None:
        while not self._halt.wait(SAMPLE):
            self._sample()

    def _sample(self) -> None:
        # Scanning /proc costs ~10 ms on this machine: refresh the tree once a second, not per sample.
        if self._samples < 5 or self._samples % 5 == 0:
            self._tree = _descendants(self.time_pid)
        self._samples += 1
        tree = self._tree
        rss = {p: _rss_kb(p) for p in tree}
        self.tree_kb = max(self.tree_kb, sum(rss.values()))
        for p, kb in rss.items():
            if tree[p] == self.time_pid:
                self.top_kb = max(self.top_kb, kb)
            elif kb:
                self._seen[p] = self._seen.get(p, 0) + 1
                self._peak[p] = max(self._peak.get(p, 0), kb)
        # Workers live through many samples; a fork that only execs a helper (ctypes' ldconfig
        # probe) shows its parent's RSS for an instant and must not count as a worker.
        self.other_kb = max((kb for p, kb in self._peak.items() if self._seen[p] >= 3), default=0)
        if self.scratch_fn is not None:
            try:
                self.scratch = max(self.scratch, self.scratch_fn())
            except OSError:
                pass  # a file vanished while it was being summed: the next sample sees it settled


def _descendants(root: int) -> dict[int, int]:
    """pid -> parent pid for every process below `root` (not root itself)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        parents[int(entry)] = int(stat.rpartition(")")[2].split()[1])
    found: dict[int, int] = {}
    frontier = {root}
    while frontier:
        kids = {p: pp for p, pp in parents.items() if pp in frontier and p not in found}
        found.update(kids)
        frontier = set(kids)
    return found


def _rss_kb(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE // 1024
    except (OSError, IndexError, ValueError):
        return 0


# ---- scratch probes ------------------------------------------------------------------------


def tar_bytes_in(*dirs: Path) -> Callable[[], int]:
    """Bytes of the `*.tar` files directly inside `dirs` (class tars waiting to be extracted)."""
    def probe() -> int:
        total = 0
        for d in dirs:
            try:
                with os.scandir(d) as it:
                    for e in it:
                        if e.name.endswith(".tar") and e.is_file(follow_symlinks=False):
                            total += e.stat(follow_symlinks=False).st_size
            except FileNotFoundError:
                continue
        return total
    return probe


def tree_bytes(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except FileNotFoundError:
                continue
    return total


# ---- statistics ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Stats:
    median: float
    low: float
    high: float
    n: int

    @property
    def spread(self) -> float:
        return self.high - self.low

    def show(self) -> str:
        return f"{self.median:7.2f}s ±{self.spread / 2:5.2f}"


def stats(values: Sequence[float]) -> Stats:
    if not values:
        return Stats(float("nan"), float("nan"), float("nan"), 0)
    return Stats(statistics.median(values), min(values), max(values), len(values))
