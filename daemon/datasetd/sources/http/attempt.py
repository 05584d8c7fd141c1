"""One attempt: up to `connections` workers taking the unfinished segments in order, watched by the caller.

The workers only write bytes, hand them to the hasher and count them. The supervisor (the caller's
thread) owns everything else: the stop event, the stall check, progress and
the periodic sidecar persist. One failed connection ends the attempt: the
others are cut, their progress persisted, and the caller decides what next.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from datasetd.errors import Aborted, Restart, Retryable, TemporaryError
from datasetd.sources.http.stream import Conn, Job, run_segment

TICK = 0.05  # how often the supervisor looks: bounds stop and stall latency
PERSIST_EVERY = 1.0  # seconds between sidecar updates (each costs an fsync of the part)
STOPPED = "stopped"
CANCELLED = "cancelled"

Report = Callable[[int], None]  # called every tick with the number of live connections
T = TypeVar("T")


def run_attempt(job: Job, stop: threading.Event, stall_timeout: float, report: Report) -> None:
    """Return when every segment is complete; raise what the worst connection failure means."""
    conns = [Conn() for _ in range(min(job.connections, len(job.waiting)))]
    failures: list[BaseException] = []

    def worker(conn: Conn) -> None:
        try:
            while conn.reason is None and not failures and (seg := job.next_segment()) is not None:
                conn.last_byte = time.monotonic()  # a new request: its stall clock starts now
                run_segment(job, seg, conn)
        except BaseException as e:  # noqa: BLE001 (handed to the supervisor, which raises the worst)
            with job.lock:
                failures.append(e)
        finally:
            conn.finished = True

    threads = [threading.Thread(target=worker, args=(c,), name=f"http-conn-{i}", daemon=True)
               for i, c in enumerate(conns)]
    for t in threads:
        t.start()
    try:
        _supervise(job, threads, conns, failures, stop, stall_timeout, report)
    finally:
        for conn in conns:
            if not conn.finished:
                conn.abort(CANCELLED)
        for t in threads:
            t.join()
        job.persist()
    if failures:
        raise _worst(failures, stop)
    if not job.state.complete:
        raise Retryable(f"GET {job.url_r}: the connections ended before every byte arrived")


def _supervise(job: Job, threads: list[threading.Thread], conns: list[Conn], failures: list[BaseException],
               stop: threading.Event, stall_timeout: float, report: Report) -> None:
    last_persist = time.monotonic()
    while any(t.is_alive() for t in threads):
        time.sleep(TICK)
        now = time.monotonic()
        live = [c for c in conns if not c.finished]
        reason = None
        if stop.is_set():
            reason = STOPPED
        elif failures:
            reason = CANCELLED
        elif any(now - c.last_byte > stall_timeout for c in live):
            reason = f"GET {job.url_r} stalled: no bytes for {stall_timeout:g} s"
        if reason is not None:
            for c in live:
                c.abort(reason)
        report(len(live))
        if now - last_persist >= PERSIST_EVERY:
            job.persist()
            last_persist = now


def _worst(failures: list[BaseException], stop: threading.Event) -> BaseException:
    """The failure that decides what happens next: a bug or a user problem beats a stop beats a retry."""
    for e in failures:
        if not isinstance(e, (Restart, Retryable, Aborted)):
            return e  # PermanentError, Refused, SizeConflict, or a bug: never hide it
    if stop.is_set():
        return TemporaryError(STOPPED, 0)
    for kind in (Restart, Retryable):
        for e in failures:
            if isinstance(e, kind):
                return e
    aborted = [e for e in failures if isinstance(e, Aborted) and e.reason not in (STOPPED, CANCELLED)]
    return Retryable(aborted[0].reason if aborted else "interrupted")


def call_cuttable(fn: Callable[[Conn], T], stop: threading.Event, stall_timeout: float) -> T:
    """Run one short request (a HEAD) in a thread, so that stop or a stall cuts it like a segment."""
    conn = Conn()
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn(conn)
        except BaseException as e:  # noqa: BLE001 (re-raised in the caller's thread below)
            box["error"] = e
        finally:
            conn.finished = True

    t = threading.Thread(target=run, name="http-head", daemon=True)
    t.start()
    while t.is_alive():
        t.join(TICK)
        if stop.is_set():
            conn.abort(STOPPED)
        elif time.monotonic() - conn.last_byte > stall_timeout:
            conn.abort(f"stalled: no answer for {stall_timeout:g} s")
    if stop.is_set():
        raise TemporaryError(STOPPED, 0)
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]
