"""Where the executor's steps run: worker processes, the proof's process, and download threads.

Each Action type names its place (`runs_in` in core/model.py); the executor submits to the pool
of that place. Processes are forked (the coordinator's modules are already imported), die with
their coordinator, and ignore SIGINT: the coordinator decides how a run stops.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import multiprocessing
import signal
import threading
from collections.abc import Iterator

from datasetd import platform

FETCH_THREADS = 4


def init_worker() -> None:
    parent = multiprocessing.parent_process()
    platform.die_with_parent(parent.pid if parent is not None else None)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the coordinator decides how to stop


def kill_processes(pool: cf.Executor | None) -> None:
    """SIGKILL a process pool's processes (concurrent.futures has no public way to)."""
    for p in list((getattr(pool, "_processes", None) or {}).values()):
        p.kill()


@contextlib.contextmanager
def pools(workers: int, stop: threading.Event) -> Iterator[dict[str, cf.Executor]]:
    """The pools by place; on the way out a stop kills the processes instead of waiting for them."""
    ctx = multiprocessing.get_context("fork")
    procs = cf.ProcessPoolExecutor(workers, mp_context=ctx, initializer=init_worker)
    prover = cf.ProcessPoolExecutor(1, mp_context=ctx, initializer=init_worker)
    threads = cf.ThreadPoolExecutor(FETCH_THREADS, thread_name_prefix="fetch")
    try:
        yield {"worker": procs, "process": prover, "thread": threads}
    finally:
        stopping = stop.is_set()
        threads.shutdown(wait=not stopping, cancel_futures=True)
        for pool in (procs, prover):
            if stopping:
                kill_processes(pool)  # abandoned steps leave only .partial dirs, cleared next run
            pool.shutdown(wait=True, cancel_futures=True)
