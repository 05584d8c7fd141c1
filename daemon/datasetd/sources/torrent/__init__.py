"""The `torrent` source: `session` is the one module that imports libtorrent; `fetcher` is the
`Source`; `run` drives one torrent; `lab` deals stripes among lab peers; `health` explains stalls.
"""

from datasetd.sources.torrent.fetcher import TorrentFetcher, make_source

__all__ = ["TorrentFetcher", "make_source"]
