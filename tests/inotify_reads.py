"""Which files in a directory tree any process opened or read: the kernel's inotify, through ctypes.

A test proves "the delete read no file" with it: IN_OPEN and IN_ACCESS are reported for every open
and every read(2) of a file in a watched directory, by whatever process (the pool's workers too).
"""

from __future__ import annotations

import ctypes
import os
import struct
from pathlib import Path
from types import TracebackType

IN_ACCESS = 0x1
IN_OPEN = 0x20
IN_Q_OVERFLOW = 0x4000
IN_ISDIR = 0x40000000
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of name


class FileReads:
    """`with FileReads(folder) as reads:` ... then `reads.opened`: relative names of files opened or read."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.opened: set[str] = set()
        self.read: set[str] = set()
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._fd = -1
        self._dirs: dict[int, str] = {}

    def __enter__(self) -> FileReads:
        self._fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        assert self._fd >= 0, os.strerror(ctypes.get_errno())
        for dirpath, _dirs, _files in os.walk(self.folder):
            wd = self._libc.inotify_add_watch(self._fd, os.fsencode(dirpath), IN_OPEN | IN_ACCESS)
            assert wd >= 0, os.strerror(ctypes.get_errno())
            self._dirs[wd] = os.path.relpath(dirpath, self.folder)
        return self

    def __exit__(self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None) -> None:
        try:
            self._drain()
        finally:
            os.close(self._fd)

    def _drain(self) -> None:
        while True:
            try:
                buf = os.read(self._fd, 1 << 16)
            except BlockingIOError:
                return
            at = 0
            while at < len(buf):
                wd, mask, _cookie, size = _EVENT.unpack_from(buf, at)
                name = buf[at + _EVENT.size: at + _EVENT.size + size].rstrip(b"\0").decode("utf-8", "surrogateescape")
                at += _EVENT.size + size
                assert not mask & IN_Q_OVERFLOW, "inotify queue overflowed: events were lost"
                if not name or mask & IN_ISDIR:
                    continue  # the directory itself listed, not a file read
                rel = os.path.normpath(os.path.join(self._dirs[wd], name))
                if mask & IN_OPEN:
                    self.opened.add(rel)
                if mask & IN_ACCESS:
                    self.read.add(rel)
