"""What is wrong with a torrent download, in one line a user can act on.

Pure: the download loop gathers an `Observation` every few seconds and shows
the `Health` in status.json; a change is logged as `torrent.health`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

OK = "ok"


@dataclass(frozen=True)
class Observation:
    elapsed: float  # seconds since this fetch started
    idle: float  # seconds since the wanted file last gained a piece
    complete: bool = False
    has_metadata: bool = True
    listen_error: str | None = None
    dht_enabled: bool = False
    dht_nodes: int | None = None
    trackers: int = 0
    tracker_errors: Mapping[str, str] = field(default_factory=dict)  # url -> last error
    peers: int = 0  # connected
    seeds: int = 0
    peers_seen: int = 0  # known to the peer list, connected or not
    download_rate: int = 0
    disk_error: str | None = None
    web_seed_error: str | None = None


@dataclass(frozen=True)
class Health:
    problem: str
    hint: str = ""

    @property
    def ok(self) -> bool:
        return self.problem == OK


def diagnose(o: Observation, *, slow_after: float, settle: float) -> Health:
    """The most fundamental problem first: a broken disk or socket explains everything after it.

    Peer-count problems count only after `settle` seconds without progress: finding and
    connecting peers takes a few seconds even when all is well.
    """
    if o.complete:
        return Health(OK)
    if o.disk_error:
        return Health(f"disk error: {o.disk_error}",
                      "free space or fix permissions under save_path; the download resumes by itself")
    if o.listen_error:
        return Health(f"cannot listen: {o.listen_error}",
                      "another program holds the port or it needs privileges; "
                      "change [torrent] listen_interfaces")
    if o.peers > 0 and o.download_rate > 0:
        return Health(OK)
    return _no_transfer(o, slow_after, settle) or Health(OK)


def _no_transfer(o: Observation, slow_after: float, settle: float) -> Health | None:
    if o.trackers and len(o.tracker_errors) >= o.trackers and o.peers == 0:
        url, msg = sorted(o.tracker_errors.items())[0]
        return Health(f"every tracker fails ({len(o.tracker_errors)}), e.g. {url}: {msg}",
                      "check the network or proxy, or add working trackers to [torrent] trackers")
    if o.dht_enabled and o.dht_nodes == 0 and o.elapsed >= slow_after and o.peers == 0:
        return Health(f"DHT has 0 nodes after {o.elapsed / 60:.0f} min",
                      "UDP may be blocked; add [torrent] trackers or dht_bootstrap_nodes")
    if o.idle < settle:
        return None
    if o.peers_seen == 0 and o.peers == 0:
        return Health("0 peers seen",
                      "no tracker, DHT node or static peer knows this torrent yet; "
                      "add trackers, peers or web_seeds")
    if o.peers == 0:
        return Health(f"{o.peers_seen} peers seen, none connectable",
                      "a firewall or NAT blocks them; open the listen port for incoming connections "
                      "or add reachable [torrent] peers")
    if o.web_seed_error and o.seeds == 0:
        return Health(f"web seed fails: {o.web_seed_error}", "check the web_seeds URLs")
    if o.idle >= slow_after:
        what = "metadata" if not o.has_metadata else "data"
        return Health(f"download rate 0 for {o.idle / 60:.0f} min ({o.peers} peers, no {what})",
                      "connected peers lack the pieces we need or choke us; wait, or add web_seeds/mirrors")
    return None
