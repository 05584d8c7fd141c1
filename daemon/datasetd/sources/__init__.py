"""Transports. Each makes one component's archive exist at `component.archive`, verified.

`base` holds the small interface every source implements; `file`, `http` and
`torrent` implement it; `torrent/lt/` alone imports libtorrent.
"""
