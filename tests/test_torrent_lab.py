"""Lab fan-out: machines sharing a manifest take each piece from the outside swarm about once."""

from __future__ import annotations

import hashlib
import random
import time
from pathlib import Path
from typing import Any

from datasetd.sources.torrent.lab import PRIORITY_LAB, PRIORITY_OWN, STRIPE, FanOut, Lab, lab_for, named_ips
from torrent_helpers import EventReader, Seeder, Tracker, fetcher_process, free_port, make_torrent

MiB = 1024 * 1024
NODES = ("127.0.0.2", "127.0.0.3", "127.0.0.4")


def test_each_node_ranks_itself_the_same_way() -> None:
    labs = [lab_for(f"{ip}:6881", [f"{p}:6881" for p in NODES if p != ip]) for ip in NODES]
    assert [lab.rank for lab in labs if lab] == [0, 1, 2]
    assert {lab.members for lab in labs if lab} == {NODES}
    assert lab_for("0.0.0.0:6881,[::]:6881", ["127.0.0.3:6881"]) is None  # no own address to rank
    assert lab_for("127.0.0.2:6881", []) is None
    assert named_ips("0.0.0.0:1,127.0.0.9:2,[::1]:3,eth0:4") == ["127.0.0.9", "::1"]


def test_fanout_takes_own_share_then_what_the_lab_holds_then_everything() -> None:
    lab = Lab(own="10.0.0.2", members=("10.0.0.1", "10.0.0.2", "10.0.0.3"))
    fan = FanOut(lab, 0, 23, wait=10.0, now=0.0)
    own = [p for p, prio in fan.priorities().items() if prio]
    assert own == [p for p in range(24) if (p // STRIPE) % 3 == 1] and len(own) == 8
    lab_has = [p < 4 for p in range(24)]  # the rank-0 node has its first stripe
    fan.update([False] * 24, lab_has, now=1.0)  # own share and the lab's pieces overlap
    prio = fan.priorities()
    assert not fan.lab_phase()
    assert [p for p, v in prio.items() if v == PRIORITY_OWN] == own
    assert [p for p, v in prio.items() if v == PRIORITY_LAB] == [0, 1, 2, 3]
    assert [p for p, v in prio.items() if v] == sorted({*own, 0, 1, 2, 3})
    have = [p in own for p in range(24)]
    fan.update(have, lab_has, now=30.0)  # own share done: the lab's pieces open, outsiders held
    assert fan.lab_phase() and [p for p, v in fan.priorities().items() if v] == sorted({*own, 0, 1, 2, 3})
    fan.update(have, [p < 8 for p in range(24)], now=38.0)
    assert fan.lab_phase() and fan.priorities()[7] == PRIORITY_LAB
    fan.update(have, [p < 8 for p in range(24)], now=47.9)  # the lab brought nothing for 9.9 s
    assert not fan.all_open()
    fan.update(have, [p < 8 for p in range(24)], now=48.0)  # ... and now for `wait` seconds
    assert fan.all_open() and not fan.lab_phase() and set(fan.priorities().values()) == {4}


def test_fanout_gives_up_on_a_slow_lab_after_as_long_as_its_own_share_took() -> None:
    lab = Lab(own="10.0.0.1", members=("10.0.0.1", "10.0.0.2"))
    fan = FanOut(lab, 0, 15, wait=5.0, now=0.0)
    have = [fan.own(p) for p in range(16)]
    fan.update(have, [False] * 16, now=20.0)  # own share took 20 s
    for t in range(21, 40):  # the peer trickles in one piece a second: never idle
        fan.update(have, [p < t - 20 for p in range(16)], now=float(t))
    assert not fan.all_open()
    fan.update(have, [p < 20 for p in range(16)], now=40.0)
    assert fan.all_open()


def test_a_member_never_connected_has_its_stripes_dealt_to_the_live_ones_at_once() -> None:
    members = ("10.0.0.1", "10.0.0.2", "10.0.0.3")
    fans = {ip: FanOut(Lab(own=ip, members=members), 0, 47, wait=60.0, now=0.0, grace=3.0)
            for ip in members[:2]}  # 10.0.0.3 is down
    for ip, fan in fans.items():
        other = next(m for m in members[:2] if m != ip)
        assert not fan.update([False] * 48, [False] * 48, now=1.0, connected=frozenset({other}))
        assert fan.live == frozenset(members)  # within the grace period everyone counts as up
        assert fan.update([False] * 48, [False] * 48, now=3.0, connected=frozenset({other}))
        assert fan.live == frozenset(members[:2])
    shares = [{p for p in range(48) if fan.own(p)} for fan in fans.values()]
    assert not shares[0] & shares[1] and shares[0] | shares[1] == set(range(48)), "every piece, once"
    assert [len(s) for s in shares] == [24, 24]
    dealt = [p for p in range(48) if (p // STRIPE) % 3 == 2]  # 10.0.0.3's stripes, split between the two
    assert {p for p in dealt if p in shares[0]} and {p for p in dealt if p in shares[1]}
    first = fans[members[0]]
    assert {p for p, v in first.priorities().items() if v == PRIORITY_OWN} == shares[0]
    # It comes back: its stripes are its own again (the pieces already fetched are simply shared).
    assert first.update([False] * 48, [False] * 48, now=10.0, connected=frozenset(members[1:]))
    assert {p for p in range(48) if first.own(p)} == {p for p in range(48) if (p // STRIPE) % 3 == 0}


def run_lab(tmp_path: Path, up: tuple[str, ...], lab_wait: float) -> tuple[float, list[EventReader]]:
    """Nodes `up` (of NODES, all listed as each other's peers) fetch from a 5 MB/s seeder found
    through a tracker; returns the copies the seeder sent and each node's events."""
    seed_dir = tmp_path / "seed"
    seed_dir.mkdir()
    data = random.Random(11).randbytes(24 * MiB)
    (seed_dir / "train.bin").write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    tracker = Tracker()
    torrent = tmp_path / "train.torrent"
    make_torrent(seed_dir / "train.bin", torrent, trackers=[tracker.url])
    ports = {ip: free_port(ip) for ip in NODES}
    procs = []
    try:
        with Seeder(torrent, seed_dir, upload_limit=5_000_000, trackers=(tracker.url,)) as seeder:
            for ip in up:
                config: dict[str, Any] = {
                    "settings": {"ip": ip, "port": ports[ip], "stall_timeout": 60.0, "seed_time": 600.0,
                                 "peers": [f"{p}:{ports[p]}" for p in NODES if p != ip]},
                    "component": {"name": "train", "torrent": str(torrent), "file": "train.bin",
                                  "save_path": str(tmp_path / ip / "downloads"), "size": len(data),
                                  "sha256": sha},
                    "state_dir": str(tmp_path / ip / ".datasetd"),
                    "tuning": {"health_interval": 1.0, "lab_wait": lab_wait},
                    "linger": True,  # keep seeding to the lab until every node is done
                }
                procs.append(fetcher_process(config))
            readers = [EventReader(p) for p in procs]
            results = [r.wait_for(lambda e: e.get("event") == "fetch.result", 90, "the fetch result")
                       for r in readers]
            time.sleep(0.5)  # let the seeder's byte counter catch up
            copies = seeder.uploaded() / len(data)
    finally:
        for p in procs:
            if p.stdin is not None:
                p.stdin.close()
        for p in procs:
            p.wait(20)
        tracker.close()
    assert all(r["sha256"] == sha for r in results)
    for ip in up:
        assert (tmp_path / ip / "downloads" / "train.bin").read_bytes() == data
    return copies, readers


def test_three_nodes_complete_while_the_seeder_sends_about_one_copy(tmp_path: Path) -> None:
    copies, readers = run_lab(tmp_path, NODES, lab_wait=15.0)
    print(f"three nodes: the seeder uploaded {copies:.2f} copies")
    assert sorted(r.of("torrent.lab_ranked")[0]["rank"] for r in readers) == [0, 1, 2]
    # Own shares and lab pieces overlap, so a node need not pass through a lab-only phase; what
    # proves the sharing is that nobody fell back to wanting everything and the copies the seeder sent.
    assert not any(r.of("torrent.lab_opened") for r in readers), "the lab should deliver every other share"
    assert copies <= 1.1, f"the seeder sent {copies:.2f} copies; the lab should need about one"


def test_a_node_that_is_down_does_not_stall_the_others(tmp_path: Path) -> None:
    # 127.0.0.4 is listed but never starts; a minute of lab_wait would be the old stall.
    copies, readers = run_lab(tmp_path, NODES[:2], lab_wait=60.0)
    print(f"one node down: the seeder uploaded {copies:.2f} copies")
    for r in readers:
        redealt = r.of("torrent.lab_redealt")
        assert redealt and redealt[0]["down"] == ["127.0.0.4"], "the missing node's share must be dealt out"
    assert not any(r.of("torrent.lab_opened") for r in readers), "nobody should wait for the missing node"
    assert copies <= 1.25, f"the seeder sent {copies:.2f} copies; the missing share should be fetched about once"
