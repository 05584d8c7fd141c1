"""Everything that touches libtorrent: the one package of datasetd that imports it.

The rest of `sources.torrent` sees typed values (../types.py) and these names:
`Session` (session.py: settings, adding and releasing torrents, the lab's IP filter, close),
`Lease` (torrents.py: one fetch's hold on a torrent, and the session's table of torrents),
the alert pump (alerts.py: by type, to its own handler or a lease's Event), `.torrent`
files (meta.py: making one, reading its files and pieces, info-hashes and magnet URIs) and
resume data (resume.py: how a torrent is added, and the resume data written back).
"""

from datasetd.sources.torrent.lt.meta import magnet_key, make_torrent, read_meta
from datasetd.sources.torrent.lt.session import LIBTORRENT_VERSION, Session
from datasetd.sources.torrent.lt.torrents import Lease

__all__ = ["LIBTORRENT_VERSION", "Lease", "Session", "magnet_key", "make_torrent", "read_meta"]
