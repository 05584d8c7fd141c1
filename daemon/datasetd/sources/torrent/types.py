"""Typed values that cross the boundary of `lt/` (which alone imports libtorrent)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from datasetd.config.manifest import TorrentSettings
from datasetd.sources.torrent.lab import named_ips


@dataclass(frozen=True)
class FileInfo:
    index: int  # libtorrent's file index
    path: str  # as the torrent lists it ('/'-separated; starts with the torrent's name if multi-file)
    size: int
    first_piece: int
    last_piece: int  # inclusive


@dataclass(frozen=True)
class Meta:
    key: str  # info-hash hex
    name: str
    num_pieces: int
    piece_length: int
    files: tuple[FileInfo, ...]  # pad files left out
    num_files: int  # libtorrent's count, pad files included (file priorities are indexed by it)

    def find(self, path: str) -> FileInfo | None:
        return next((f for f in self.files if f.path == path), None)


@dataclass(frozen=True)
class Layout:
    """Where one file's bytes lie in the torrent's pieces, and the SHA-1 each piece must have."""

    offset: int  # the file's first byte in the torrent
    size: int
    torrent_size: int
    piece_length: int
    first_piece: int
    last_piece: int  # inclusive
    hashes: tuple[bytes, ...] | None  # v1 SHA-1 of first_piece..last_piece (None: a v2-only torrent)

    def file_range(self, piece: int) -> tuple[int, int]:
        """[start, end) in the file of the piece's bytes that belong to the file."""
        start, end = self._torrent_range(piece)
        return max(start, self.offset) - self.offset, min(end, self.offset + self.size) - self.offset

    def sha1(self, piece: int) -> bytes | None:
        """The piece's SHA-1 when the file holds the whole piece (else it cannot be checked alone)."""
        start, end = self._torrent_range(piece)
        if self.hashes is None or start < self.offset or end > self.offset + self.size:
            return None
        return self.hashes[piece - self.first_piece]

    def _torrent_range(self, piece: int) -> tuple[int, int]:
        return piece * self.piece_length, min((piece + 1) * self.piece_length, self.torrent_size)


@dataclass(frozen=True)
class AddRequest:
    key: str
    save_path: Path
    resume_path: Path | None  # None: never save resume data (a seeder)
    torrent_file: Path | None = None
    magnet: str | None = None
    trackers: tuple[str, ...] = ()
    peers: tuple[tuple[str, int], ...] = ()
    upload_limit: int = 0  # bytes/s for this torrent, all peers included (local ones too)
    # Files start at priority 0, so nothing is requested before the fetch says which file it wants.
    files_off: bool = False


@dataclass(frozen=True)
class Status:
    state: str  # libtorrent's state name: checking_files, downloading_metadata, downloading, ...
    paused: bool
    error: str
    upload_mode: bool
    has_metadata: bool
    peers: int  # connected
    seeds: int  # connected seeds
    peers_seen: int  # in the peer list
    download_rate: int  # payload bytes/s
    upload_rate: int
    uploaded: int  # payload bytes, over the torrent's life
    trackers: int

    @property
    def checking(self) -> bool:
        return self.state.startswith("checking")


@dataclass(frozen=True)
class SessionHealth:
    listen_error: str | None
    dht_nodes: int | None  # None until libtorrent first reports it


@dataclass(frozen=True)
class Event:
    """A torrent alert, reduced to what the download loop acts on."""

    kind: str  # state, metadata_received, checked, finished, file_error, tracker_error, ...
    message: str = ""
    url: str = ""
    count: int = 0


def settings_pack(s: TorrentSettings, version: str) -> dict[str, object]:
    """libtorrent settings for the manifest's [torrent] table."""
    pack: dict[str, object] = {
        "listen_interfaces": s.listen_interfaces,
        "enable_dht": s.dht, "enable_lsd": s.lsd, "enable_upnp": s.upnp, "enable_natpmp": s.natpmp,
        "enable_outgoing_utp": s.utp, "enable_incoming_utp": s.utp,
        "download_rate_limit": s.download_rate_limit, "upload_rate_limit": s.upload_rate_limit,
        "user_agent": f"datasetd libtorrent/{version}",
        # Lab peers start minutes apart: the default 60 s back-off would leave a late one alone.
        "min_reconnect_time": 5,
        # With one file of many wanted, "finished" is common and reversible (fan-out opens more
        # pieces later); closing seed connections then would only force reconnects.
        "close_redundant_connections": False,
        "stop_tracker_timeout": 2,
        # The lab phase blocks outside peers with the IP filter; trackers must still answer.
        "apply_ip_filter_to_trackers": False,
        # Peers are told the configured port: silently listening on port+1 instead would leave
        # static lab peers knocking at the wrong door. Fail loudly (health says so) instead.
        "max_retry_port_bind": 0, "listen_system_port_fallback": False,
    }
    ips = named_ips(s.listen_interfaces)
    if ips:
        # On a multi-homed lab node peers must see us at the address the others rank us by.
        pack["outgoing_interfaces"] = ",".join(ips)
    if s.dht_bootstrap_nodes:
        pack["dht_bootstrap_nodes"] = ",".join(s.dht_bootstrap_nodes)
    return pack
