"""The `torrent` source: `lt/` is the one package that imports libtorrent; `fetcher` is the
`Source`; `run` drives one torrent; `watch` keeps it going (health, disk retries, web seeds),
diagnosed by `health`; `verify` checks the file against the pins, with the in-order digest of
`inorder` and `frontier`; `lab` deals stripes among lab peers; `types` crosses into `lt/`.
"""

from datasetd.sources.torrent.fetcher import TorrentFetcher, make_source

__all__ = ["TorrentFetcher", "make_source"]
