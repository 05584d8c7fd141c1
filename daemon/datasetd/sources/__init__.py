"""Transports. Each makes one component's archive exist at `component.archive`, verified.

`base` holds the small interface every source implements; `file`, `http` and
`torrent` implement it; `_libtorrent` alone imports libtorrent.
"""
