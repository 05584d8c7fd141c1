"""Lab fan-out: N machines on one manifest take each piece from the outside swarm about once.

Every node sorts the lab's addresses (its own listen IP plus the IPs of the
static `peers`) and takes the rank of its own address; with the same manifest
every node computes the same order, so no coordination is needed.

1. Own share: a node wants only its own stripes of pieces (1/N of them) and
   fetches them from whoever has them, the outside swarm included.
2. Lab: once its share is done it wants the pieces lab peers hold, and the
   download from every peer outside the lab is throttled to a trickle.
   Without that throttle libtorrent would queue requests for those pieces on
   the (idle) connections to outside peers as readily as on the lab's.
3. All: a node that is down or slow must not stall the rest. When the lab has
   brought nothing new for `wait` seconds, or the lab phase has lasted as long
   as the own share took (and at least `wait`), the node wants everything and
   lifts the throttle. A stall does the same.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass

PRIORITY_OFF = 0
PRIORITY_ON = 4
STRIPE = 4  # pieces per stripe: neighbours land on one node, so its writes stay sequential


def split_hostport(text: str) -> tuple[str, int]:
    """'10.0.0.2:6881' or '[fe80::1]:6881' -> (host, port); ValueError if malformed."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not host:port")
    return host.strip("[]"), int(port)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def named_ips(listen_interfaces: str) -> list[str]:
    """The specific IPs `listen_interfaces` names (not 0.0.0.0/[::], not device names), in order."""
    out: list[str] = []
    for item in listen_interfaces.split(","):
        if not item.strip():
            continue
        try:
            host, _ = split_hostport(item)
        except ValueError:
            continue
        ip = _ip(host)
        if ip is not None and not ip.is_unspecified and str(ip) not in out:
            out.append(str(ip))
    return out


def resolve(host: str) -> str | None:
    """An IP literal as is; a name through the resolver (lab peers are usually on /etc/hosts)."""
    if _ip(host) is not None:
        return str(_ip(host))
    try:
        return socket.gethostbyname(host)
    except OSError:
        return None


def static_peers(peers: Sequence[str]) -> list[tuple[str, int]]:
    """Resolved (ip, port) of the manifest's static peers; unresolvable names are skipped."""
    out: list[tuple[str, int]] = []
    for text in peers:
        try:
            host, port = split_hostport(text)
        except ValueError:
            continue
        ip = resolve(host)
        if ip is not None:
            out.append((ip, port))
    return out


@dataclass(frozen=True)
class Lab:
    own: str
    members: tuple[str, ...]  # sorted the same way on every node

    @property
    def rank(self) -> int:
        return self.members.index(self.own)

    @property
    def size(self) -> int:
        return len(self.members)

    @property
    def others(self) -> frozenset[str]:
        return frozenset(m for m in self.members if m != self.own)


def lab_for(listen_interfaces: str, peers: Sequence[str]) -> Lab | None:
    """The lab this node belongs to, or None when it has no own IP or no static peer."""
    own = named_ips(listen_interfaces)
    others = {ip for ip, _ in static_peers(peers)}
    if not own or not others - {own[0]}:
        return None
    members = sorted({own[0], *others}, key=lambda s: ipaddress.ip_address(s).packed)
    return Lab(own=own[0], members=tuple(members))


class FanOut:
    """Piece priorities for one file's pieces [first, last] on one lab node."""

    def __init__(self, lab: Lab, first: int, last: int, *, wait: float, now: float) -> None:
        self.lab = lab
        self.first = first
        self.last = last
        self.wait = wait
        self.opened_all = False
        self._start = now
        self._last_gain = now
        self._own_done_at: float | None = None
        self._prio = {p: PRIORITY_ON if self.own(p) else PRIORITY_OFF for p in self.pieces()}
        self._lab_count = 0

    def pieces(self) -> range:
        return range(self.first, self.last + 1)

    def own(self, piece: int) -> bool:
        return ((piece - self.first) // STRIPE) % self.lab.size == self.lab.rank

    def all_open(self) -> bool:
        return self.opened_all

    def lab_phase(self) -> bool:
        """Own share done, rest not yet opened: only lab peers should be sending."""
        return self._own_done_at is not None and not self.opened_all

    def priorities(self) -> dict[int, int]:
        return dict(self._prio)

    def open_all(self) -> None:
        """Everything wanted, e.g. on a stall or when the lab stopped helping."""
        self.opened_all = True
        self._prio = dict.fromkeys(self._prio, PRIORITY_ON)

    def update(self, have: Sequence[bool], lab_have: Sequence[bool], now: float) -> None:
        """Advance the phase given our pieces and the union of the lab peers' pieces."""
        if self.opened_all:
            return
        held = [p for p in self.pieces() if p < len(lab_have) and lab_have[p]]
        if len(held) > self._lab_count:
            self._lab_count = len(held)
            self._last_gain = now
        if self._own_done_at is None:
            if not all(have[p] for p in self.pieces() if self.own(p)):
                return
            self._own_done_at = now
        for p in held:
            self._prio[p] = PRIORITY_ON
        own_took = self._own_done_at - self._start
        idle = now - max(self._last_gain, self._own_done_at)
        if idle >= self.wait or now - self._own_done_at >= max(self.wait, own_took):
            self.open_all()
