"""A torrent's metadata: making a .torrent, reading its files and pieces, naming it by info-hash.

Part of `lt`, the one package that imports libtorrent: `fetcher` reads a .torrent or a magnet
URI here before anything is downloaded, and a `Lease` reads its torrent's layout here once the
metadata is in.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any, cast

import libtorrent as _libtorrent

from datasetd.sources.torrent.types import FileInfo, Layout, Meta
from datasetd.state.durable import save_file

lt: Any = _libtorrent


def info_key(hashes: Any) -> str:
    """The hex name a torrent goes by here: its v1 info-hash, or the v2 one for v2-only torrents."""
    return str(hashes.v1) if hashes.has_v1() else str(hashes.v2)


def magnet_key(uri: str) -> str:
    """The info-hash a magnet URI names; ValueError when it names none."""
    try:
        return info_key(lt.parse_magnet_uri(uri).info_hashes)
    except RuntimeError as e:
        raise ValueError(str(e)) from e


def read_meta(path: Path) -> Meta:
    """Files and pieces of a .torrent; ValueError if it is not one."""
    try:
        return meta_of(lt.torrent_info(str(path)))
    except RuntimeError as e:
        raise ValueError(str(e)) from e


def meta_of(ti: Any) -> Meta:
    """The files (pad files left out) and pieces of libtorrent's torrent_info."""
    fs = ti.layout()
    files = []
    for i in range(fs.num_files()):
        if fs.file_flags(i) & fs.flag_pad_file:
            continue
        size, offset = fs.file_size(i), fs.file_offset(i)
        first = offset // ti.piece_length()
        last = max(first, (offset + size - 1) // ti.piece_length())
        files.append(FileInfo(i, fs.file_path(i).replace("\\", "/"), size, first, last))
    return Meta(info_key(ti.info_hashes()), ti.name(), ti.num_pieces(), ti.piece_length(), tuple(files),
                fs.num_files())


def layout_of(ti: Any, f: FileInfo) -> Layout:
    """The pieces of file `f` in torrent_info `ti` and their v1 SHA-1s."""
    pieces = range(f.first_piece, f.last_piece + 1)
    hashes = tuple(bytes(ti.hash_for_piece(p)) for p in pieces) if ti.info_hashes().has_v1() else None
    return Layout(offset=ti.layout().file_offset(f.index), size=f.size, torrent_size=ti.total_size(),
                  piece_length=ti.piece_length(), first_piece=f.first_piece, last_piece=f.last_piece,
                  hashes=hashes)


def make_torrent(source: Path, dest: Path, *, piece_length: int = 256 * 1024,
                 web_seeds: Iterable[str] = (), trackers: Iterable[str] = ()) -> str:
    """Write a v1 .torrent of a file or directory to `dest`; return its info-hash."""
    ct = lt.create_torrent(lt.list_files(str(source)), piece_length, flags=lt.create_torrent.v1_only)
    for url in web_seeds:
        ct.add_url_seed(url)
    for tier, url in enumerate(trackers):
        ct.add_tracker(url, tier)
    lt.set_piece_hashes(ct, str(source.parent))
    data = lt.bencode(ct.generate())
    # The .torrent pins every piece hash: a torn one must never be read back.
    with save_file(dest, "wb") as f:
        cast(IO[bytes], f).write(data)
    return read_meta(dest).key
