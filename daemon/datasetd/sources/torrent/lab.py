"""Lab fan-out: N machines on one manifest take each piece from the outside swarm about once.

Every node sorts the lab's addresses (its own listen IP plus the IPs of the
static `peers`) and takes the rank of its own address; with the same manifest
every node computes the same order, so no coordination is needed. Pieces go
in stripes of STRIPE, dealt round the members by rank.

- Own share: a node wants its own stripes at the top priority, from anyone
  (the outside swarm included). A member that has not been connected for
  `grace` seconds counts as down: its stripes are dealt round the live
  members at once, so nobody waits for a machine that is off.
- Lab pieces: from the start, every piece some lab peer holds is wanted at
  the lowest priority. Outside peers are asked for own pieces first (priority
  beats rarity in libtorrent's picker), the lab peers for what they hold: the
  two overlap instead of running one after the other.
- Once the own share is done, outside peers are blocked (the session's IP
  filter) while lab peers send the rest; libtorrent has no per-peer piece
  control, and without the block it would ask the idle outside connections
  for the lab's pieces too. If the shares change (a member went down), the
  block lifts until the new own pieces are in.
- A lab that stops helping must not stall the rest: when it has brought
  nothing new for `wait` seconds, or the lab phase has lasted as long as the
  own share took (and at least `wait`), the node wants everything and lifts
  the block. A stall does the same.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass

PRIORITY_OFF = 0
PRIORITY_LAB = 1  # a lab peer holds it: below own pieces, so an outside peer is asked for those first
PRIORITY_ON = 4  # everything open: libtorrent's default
PRIORITY_OWN = 7  # this node's share: outside peers serve it before anything the lab also holds
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

    def __init__(self, lab: Lab, first: int, last: int, *, wait: float, now: float, grace: float = 3.0) -> None:
        self.lab = lab
        self.first = first
        self.last = last
        self.wait = wait
        self.grace = grace
        self.opened_all = False
        self.live: frozenset[str] = frozenset(lab.members)  # presumed up until `grace` has passed
        self._start = now
        self._last_gain = now
        self._seen: dict[str, float] = {}  # lab peer -> when it was last connected
        self._own_done_at: float | None = None
        self._held: list[bool] = []
        self._lab_count = 0
        self._prio: dict[int, int] = {}
        self._deal()

    def pieces(self) -> range:
        return range(self.first, self.last + 1)

    def owner(self, piece: int) -> str:
        """The live member whose share `piece` is in: stripes of an absent member go round the live ones."""
        stripe = (piece - self.first) // STRIPE
        dealt = self.lab.members[stripe % self.lab.size]
        if dealt in self.live:
            return dealt
        live = [m for m in self.lab.members if m in self.live]
        return live[(stripe // self.lab.size) % len(live)]

    def own(self, piece: int) -> bool:
        return self.owner(piece) == self.lab.own

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
        self._prio = dict.fromkeys(self.pieces(), PRIORITY_ON)

    def update(self, have: Sequence[bool], lab_have: Sequence[bool], now: float,
               connected: frozenset[str] | None = None) -> bool:
        """Advance given our pieces, the union of the lab peers' pieces and the lab peers connected
        now (None: not known); True when the live members, and so the shares, changed."""
        if self.opened_all:
            return False
        redealt = connected is not None and self._track(connected, now)
        self._held = [p < len(lab_have) and lab_have[p] for p in range(self.last + 1)]
        held = sum(self._held[p] for p in self.pieces())
        if held > self._lab_count:
            self._lab_count, self._last_gain = held, now
        self._deal()
        # Own pieces a lab peer already holds come from the lab like any other it holds.
        mine = [p for p in self.pieces() if self.own(p) and not self._held[p]]
        if not all(have[p] for p in mine):
            self._own_done_at = None  # (again) pieces to fetch from outside: outsiders are needed
            return redealt
        if self._own_done_at is None:
            self._own_done_at = now
        since = max(self._last_gain, self._own_done_at)
        if now - since >= self.wait or now - self._own_done_at >= max(self.wait, self._own_took()):
            self.open_all()
        return redealt

    def _own_took(self) -> float:
        return (self._own_done_at or self._start) - self._start

    def _track(self, connected: frozenset[str], now: float) -> bool:
        for m in connected:
            self._seen[m] = now
        if now - self._start < self.grace:
            return False
        live = frozenset({self.lab.own} | {m for m, t in self._seen.items() if now - t < self.grace})
        changed, self.live = live != self.live, live
        return changed

    def _deal(self) -> None:
        """Own pieces first (outside peers serve them before anything else), then what the lab holds."""
        held = self._held

        def prio(p: int) -> int:
            if p < len(held) and held[p]:
                return PRIORITY_LAB
            return PRIORITY_OWN if self.own(p) else PRIORITY_OFF

        self._prio = {p: prio(p) for p in self.pieces()}
