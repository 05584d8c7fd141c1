"""Bare libtorrent for the BitTorrent row: make a .torrent, seed it, or fetch it (the baseline).

usage: bt.py make FILE DEST PIECE_BYTES
       bt.py seed TORRENT DATA_DIR LISTEN          (prints "ready" once seeding; stops at EOF on stdin)
       bt.py fetch TORRENT SAVE_DIR LISTEN PEER [SHA256]
                                                   (downloads, closes the session, syncs; with SHA256 the
                                                   file is hashed in piece order while it downloads and
                                                   compared: the floor of a verified download)

The seeder uses datasetd's own settings_pack; the fetch baseline is a bare
leecher with libtorrent's default settings. Both listen on a loopback address
with DHT, LSD, UPnP, NAT-PMP and uTP off, so nothing leaves 127.0.0.0/8.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import libtorrent as lt

from datasetd.config.manifest import TorrentSettings


def datasetd_pack(s: TorrentSettings) -> dict[str, object]:
    """The settings dict datasetd hands libtorrent for `s` (whichever helper this version has)."""
    try:
        from datasetd.sources.torrent.lt import session as _libtorrent
    except ImportError:  # a datasetd from before sources/torrent/lt/
        from datasetd.sources.torrent import session as _libtorrent  # type: ignore[no-redef]

    full = getattr(_libtorrent, "_pack", None)  # settings_pack plus datasetd's alert mask
    if full is not None:
        return dict(full(s))
    fn = _libtorrent.settings_pack
    args = (s, lt.__version__) if len(inspect.signature(fn).parameters) > 1 else (s,)
    return dict(fn(*args))


def session(listen: str) -> Any:
    s = TorrentSettings(listen_interfaces=listen, dht=False, lsd=False, upnp=False, natpmp=False, utp=False)
    return lt.session(datasetd_pack(s))


def default_session(listen: str) -> Any:
    """libtorrent's defaults, but for the listen address and no discovery that could leave loopback."""
    return lt.session({"listen_interfaces": listen, "enable_dht": False, "enable_lsd": False,
                       "enable_upnp": False, "enable_natpmp": False, "enable_outgoing_utp": False,
                       "enable_incoming_utp": False})


def make(file: Path, dest: Path, piece: int) -> None:
    ct = lt.create_torrent(lt.list_files(str(file)), piece, flags=lt.create_torrent.v1_only)
    lt.set_piece_hashes(ct, str(file.parent))
    tmp = dest.with_suffix(".tmp")
    tmp.write_bytes(lt.bencode(ct.generate()))
    os.replace(tmp, dest)


def _add(ses: Any, torrent: Path, save: Path, seed: bool) -> Any:
    p = lt.add_torrent_params()
    p.ti = lt.torrent_info(str(torrent))
    p.save_path = str(save)
    if seed:
        p.flags |= lt.torrent_flags.seed_mode  # the data is known good: skip the full hash check
    return ses.add_torrent(p)


def seed(torrent: Path, data: Path, listen: str) -> None:
    ses = session(listen)
    h = _add(ses, torrent, data, seed=True)
    while not h.status().is_seeding:
        time.sleep(0.05)
    print("ready", flush=True)
    done = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    done.wait()


def fetch(torrent: Path, save: Path, listen: str, peer: str, sha256: str | None = None) -> None:
    ses = default_session(listen)
    h = _add(ses, torrent, save, seed=False)
    digest = None
    if sha256 is not None:
        import concurrent.futures as cf  # here: the bare baseline does not pay its import

        digest = cf.ThreadPoolExecutor(1).submit(_hash_in_order, h, save)
    ip, port = peer.rsplit(":", 1)
    h.connect_peer((ip, int(port)))
    last_connect = time.monotonic()
    while not h.status().is_seeding:
        time.sleep(0.05)
        if h.status().num_peers == 0 and time.monotonic() - last_connect > 2:
            h.connect_peer((ip, int(port)))
            last_connect = time.monotonic()
    if digest is not None and digest.result() != sha256:
        sys.exit(f"{save}: sha256 {digest.result()}, pinned {sha256}")
    ses.remove_torrent(h)
    del h, ses  # the session's destructor waits for the disk threads to close the file
    os.sync()


def _hash_in_order(h: Any, save: Path) -> str:
    """sha256 of the file, piece by piece as each one has passed libtorrent's check: the least a
    download proved against a pinned digest does (no fences, no priorities, no journal). A piece
    passes its check in memory before all of it is in the file, whose pages not written yet read
    as zeros (the file is sparse): a piece with a zero page is taken once its SHA-1 matches."""
    ti = h.torrent_file()
    path = save / ti.files().file_path(0)
    digest, piece = hashlib.sha256(), 0
    while not path.exists():
        time.sleep(0.005)
    with open(path, "rb", buffering=0) as f:
        while piece < ti.num_pieces():
            data = os.pread(f.fileno(), ti.piece_size(piece), piece * ti.piece_length()) \
                if h.have_piece(piece) else None
            if data is None or (_ZERO_PAGE in data and hashlib.sha1(data).digest() != ti.hash_for_piece(piece)):
                time.sleep(0.005)
                continue
            digest.update(data)
            piece += 1
    return digest.hexdigest()


_ZERO_PAGE = bytes(4096)


if __name__ == "__main__":
    cmd, *rest = sys.argv[1:]
    if cmd == "make":
        make(Path(rest[0]), Path(rest[1]), int(rest[2]))
    elif cmd == "seed":
        seed(Path(rest[0]), Path(rest[1]), rest[2])
    elif cmd == "fetch":
        fetch(Path(rest[0]), Path(rest[1]), rest[2], rest[3], rest[4] if len(rest) > 4 else None)
    else:
        sys.exit(__doc__)
