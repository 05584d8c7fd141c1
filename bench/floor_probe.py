"""The floor of a verified class-tars extraction in Python: issue 15's probe, and it plus the archive digest.

usage: floor_probe.py OUTER_TAR OUT_DIR WORKERS [--digest]

`WORKERS` forked workers, each class tar read in place from the outer tar (headers by tarfile
from a pread window, bytes by pread), every member created with O_EXCL|O_NOFOLLOW, sha256'd while
written, then read back and compared; one sync at the end. No journal, no member rules, no
crash safety. With `--digest` one more process hashes the whole archive alongside, which is what
proves the bytes against a pin: the work datasetd cannot leave out. What separates datasetd from
this is its own machinery (start-up, journal, rules, fingerprints, group commit).
"""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import os
import sys
import tarfile
from pathlib import Path

CHUNK = 1 << 20
O_CREATE = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class Window(io.RawIOBase):
    def __init__(self, fd: int, start: int, size: int) -> None:
        super().__init__()
        self.fd, self.start, self.size, self.pos = fd, start, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = max(0, (0, self.pos, self.size)[whence] + offset)
        return self.pos

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        n = max(0, min(len(b), self.size - self.pos))
        got = os.preadv(self.fd, [memoryview(b)[:n]], self.start + self.pos) if n else 0
        self.pos += got
        return got


def extract_class(task: tuple[str, int, int, str]) -> int:
    archive, start, size, folder = task
    fd = os.open(archive, os.O_RDONLY)
    os.mkdir(folder)
    files = 0
    with tarfile.open(fileobj=Window(fd, start, size), mode="r:") as tf:
        for m in tf:
            path = f"{folder}/{m.name}"
            if m.isdir():
                os.makedirs(path, exist_ok=True)
                continue
            out = os.open(path, O_CREATE, 0o644)
            h, done = hashlib.sha256(), 0
            while done < m.size:
                chunk = os.pread(fd, min(CHUNK, m.size - done), start + m.offset_data + done)
                h.update(chunk)
                os.write(out, chunk)
                if os.pread(out, len(chunk) + 1, done) != chunk:
                    raise SystemExit(f"{path}: read back differs")
                done += len(chunk)
            os.close(out)
            files += 1
    os.close(fd)
    return files


def digest(archive: str) -> None:
    h = hashlib.sha256()
    with open(archive, "rb", buffering=0) as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)


def main(archive: str, out: Path, workers: int, with_digest: bool) -> int:
    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as outer:
        tasks = [(archive, m.offset_data, m.size, str(out / m.name.removeprefix("./").removesuffix(".tar")))
                 for m in outer if m.isreg()]
    ctx = multiprocessing.get_context("fork")
    hasher = ctx.Process(target=digest, args=(archive,)) if with_digest else None
    if hasher is not None:
        hasher.start()
    with ctx.Pool(workers) as pool:
        pool.map(extract_class, tasks, chunksize=1)
    if hasher is not None:
        hasher.join()
    os.sync()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), "--digest" in sys.argv[4:]))
