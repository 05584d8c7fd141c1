"""Row 7: lab fan-out over loopback, timed against one copy at the seeder's rate.

Nodes on 127.0.0.2, .3, ... each run datasetd's torrent fetcher in its own
process (tests/torrent_helpers.py `fetch`, default tuning, every node listed as
the others' static peer) against one seeder capped at RATE and found through a
tracker, as a lab behind one uplink would be. The row's time is from starting
the nodes until the last one holds the verified file; "one copy" is SIZE / RATE,
what a single machine needs at best; "copies" is what the seeder sent / SIZE.
7b lists six nodes and starts five: the sixth machine is down.
"""

from __future__ import annotations

import json
import random
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from report import Row
from rows_unpack import Ctx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from torrent_helpers import EventReader, Seeder, Tracker, fetcher_process, free_port, make_torrent

SIZE = 84 * 2**20
RATE = 5_000_000  # bytes/s, the seeder's upload cap: one copy takes ~17.6 s
CASES = (  # name, listed, up, time target (x one copy), copies target
    ("7 lab fan-out, 3 nodes all up: time vs one copy at the seeder's rate", 3, 3, 1.3, 1.05),
    ("7b lab fan-out, 6 listed, 5 up: time vs one copy at the seeder's rate", 6, 5, 1.6, 1.25),
)


def lab_rows(ctx: Ctx) -> list[Row]:
    work = ctx.work / "lab"
    shutil.rmtree(work, ignore_errors=True)
    seed_dir = work / "seed"
    seed_dir.mkdir(parents=True)
    data = seed_dir / "train.bin"
    rng = random.Random(7)
    with open(data, "wb") as f:
        for _ in range(SIZE // 2**20):
            f.write(rng.randbytes(2**20))
    rows = []
    try:
        for name, listed, up, t_target, c_target in CASES:
            ctx.say(f"row {name.split()[0]}: lab of {listed} listed, {up} up, {SIZE / 1e6:.0f} MB "
                    f"from a seeder at {RATE / 1e6:.0f} MB/s")
            got = [_once(ctx, work / f"run-{listed}-{rep}", data, listed, up, rep) for rep in range(ctx.reps)]
            rows.append(_row(name, got, t_target, c_target))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rows


def _once(ctx: Ctx, work: Path, data: Path, listed: int, up: int, rep: int) -> tuple[float, float]:
    """(seconds until every node that is up holds the file, copies the seeder sent)."""
    nodes = [f"127.0.0.{2 + i}" for i in range(listed)]
    ports = {ip: free_port(ip) for ip in nodes}
    tracker = Tracker()
    torrent = work / "train.torrent"
    work.mkdir(parents=True)
    make_torrent(data, torrent, trackers=[tracker.url])
    procs: list[Any] = []
    readers: list[EventReader] = []
    try:
        with Seeder(torrent, data.parent, upload_limit=RATE, trackers=(tracker.url,)) as seeder:
            start = time.monotonic()
            for ip in nodes[:up]:
                procs.append(fetcher_process({
                    "settings": {"ip": ip, "port": ports[ip], "seed_time": 600.0,
                                 "peers": [f"{p}:{ports[p]}" for p in nodes if p != ip]},
                    "component": {"name": "train", "torrent": str(torrent), "file": data.name,
                                  "save_path": str(work / ip), "size": SIZE},
                    "state_dir": str(work / ip / ".datasetd"),
                    "linger": True,  # keep seeding to the lab until every node is done
                }))
            readers = [EventReader(p) for p in procs]
            for r in readers:
                r.wait_for(lambda e: e.get("event") == "fetch.result", 600, "the fetch result")
            seconds = time.monotonic() - start
            time.sleep(0.5)  # the seeder's byte counter lags a little
            copies = seeder.uploaded() / SIZE
    finally:
        for p in procs:
            if p.stdin is not None:
                p.stdin.close()
        for p in procs:
            p.wait(30)
        tracker.close()
        _keep_log(ctx, readers, listed, rep)
        shutil.rmtree(work, ignore_errors=True)
    ctx.say(f"  {up}/{listed} nodes: {seconds:.1f} s, {copies:.2f} copies")
    return seconds, copies


def _keep_log(ctx: Ctx, readers: list[EventReader], listed: int, rep: int) -> None:
    with open(ctx.logs / f"lab-{listed}-{rep}.jsonl", "w") as f:
        for i, r in enumerate(readers):
            for e in r.events:
                f.write(json.dumps({"node": i, **e}, default=str) + "\n")


def _row(name: str, got: list[tuple[float, float]], t_target: float, c_target: float) -> Row:
    one_copy = SIZE / RATE
    times = [t for t, _ in got]
    copies = statistics.median(c for _, c in got)
    median = statistics.median(times)
    ratio = median / one_copy
    stat: dict[str, Any] = {"median": round(median, 3), "min": round(min(times), 3), "max": round(max(times), 3),
                            "n": len(times)}
    base = {"median": round(one_copy, 3), "min": round(one_copy, 3), "max": round(one_copy, 3), "n": 1}
    return {"name": name, "kind": "ratio", "datasetd": stat, "baseline": base,
            "baseline_name": f"one copy: {SIZE / 1e6:.0f} MB at {RATE / 1e6:.0f} MB/s", "ratio": round(ratio, 3),
            "target": f"<= {t_target}, {c_target} cp", "met": bool(ratio <= t_target and copies <= c_target),
            "copies": round(copies, 3), "copies_each": [round(c, 3) for _, c in got],
            "peak_rss_mb": {"datasetd": "-", "baseline": "-"}}
