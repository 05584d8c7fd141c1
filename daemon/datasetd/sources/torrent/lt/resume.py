"""How a torrent is added: its add_torrent_params, from resume data when there is usable resume
data, and the resume data written back when libtorrent hands it over.

Part of `lt`, the one package that imports libtorrent: `Session.add` builds the params here;
the alert pump (alerts.py) writes each save_resume_data_alert's params here.
"""

from __future__ import annotations

from pathlib import Path
from typing import IO, Any, cast

import libtorrent as _libtorrent

from datasetd import logs
from datasetd.sources.torrent.lt.meta import info_key
from datasetd.sources.torrent.types import AddRequest
from datasetd.state.durable import save_file

lt: Any = _libtorrent
log = logs.get()


def add_params(req: AddRequest) -> tuple[Any, bool, int]:
    """(add_torrent_params, loaded from resume data, pieces the resume data claims)."""
    params, pieces = _resume_params(req)
    resumed = params is not None
    if params is None:
        params = lt.parse_magnet_uri(req.magnet) if req.magnet else lt.add_torrent_params()
    if params.ti is None and req.torrent_file is not None:
        params.ti = lt.torrent_info(str(req.torrent_file))
    params.save_path = str(req.save_path)
    off = lt.torrent_flags.paused | lt.torrent_flags.auto_managed | lt.torrent_flags.upload_mode
    params.flags = (params.flags | lt.torrent_flags.update_subscribe) & ~off
    if req.files_off:
        params.flags |= lt.torrent_flags.default_dont_download
    params.trackers = list(params.trackers) + [t for t in req.trackers if t not in params.trackers]
    return params, resumed, pieces


def _resume_params(req: AddRequest) -> tuple[Any, int]:
    if req.resume_path is None or not req.resume_path.exists():
        return None, 0
    try:
        params = lt.read_resume_data(req.resume_path.read_bytes())
    except (RuntimeError, OSError) as e:
        log.warning("torrent.resume_unreadable", path=str(req.resume_path), error=str(e))
        return None, 0
    if info_key(params.info_hashes) != req.key:
        log.warning("torrent.resume_unreadable", path=str(req.resume_path), error="another torrent's data")
        return None, 0
    return params, sum(1 for p in params.have_pieces if p)


def write_resume(path: Path, params: Any) -> int:
    """Write resume data `params` to `path`; return the pieces it counts as had."""
    data = lt.write_resume_data_buf(params)
    # Atomic replace: a crash mid-write keeps the previous resume file, never a torn one that
    # libtorrent would reject and so force a full recheck of the data.
    with save_file(path, "wb") as f:
        cast(IO[bytes], f).write(data)
    return sum(1 for p in params.have_pieces if p)
