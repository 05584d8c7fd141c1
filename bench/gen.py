"""Deterministic ImageNet-shaped data sets, written to disk one class tar at a time.

A set is an outer tar of `W.tar` class tars (like ILSVRC2012_img_train.tar)
plus the same class tars split out under `classes/` (the starting point of
the "already split" baselines). Member bytes are Mersenne Twister output:
incompressible like JPEGs, and byte-identical for the same spec, so a set is
generated once and reused (a `done.json` marks it complete).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
import tarfile
from dataclasses import asdict, dataclass
from pathlib import Path

MTIME = 1_340_000_000
BLOCK = 512


@dataclass(frozen=True)
class Spec:
    name: str
    classes: int
    files: int  # per class
    min_size: int
    max_size: int
    seed: int = 2012

    @property
    def key(self) -> str:
        return f"{self.name}-{self.classes}x{self.files}-{self.min_size}-{self.max_size}-s{self.seed}"

    @property
    def total_files(self) -> int:
        return self.classes * self.files

    def approx_tar_bytes(self) -> int:
        """Outer tar size estimate (headers and block padding included)."""
        member = BLOCK + _round_up((self.min_size + self.max_size) // 2 + 14, BLOCK)
        return self.total_files * member + self.classes * (2 * BLOCK + 10240)

    def approx_tree_bytes(self) -> int:
        """Disk used by the extracted tree (4 KiB blocks)."""
        return self.total_files * _round_up((self.min_size + self.max_size) // 2 + 14, 4096)


@dataclass(frozen=True)
class DataSet:
    spec: Spec
    dir: Path
    outer: Path  # the train tar
    classes_dir: Path  # the class tars, split out
    size: int
    sha256: str
    files: int
    file_bytes: int  # sum of member sizes
    wnids: list[str]

    @property
    def class_tar_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.classes_dir.glob("*.tar")) // max(1, self.spec.classes)


def wnids(count: int) -> list[str]:
    # Eight digits after 'n' like real WNIDs; spaced so that sorting matches generation order.
    return [f"n{1440764 + 9973 * i:08d}" for i in range(count)]


def ensure(spec: Spec, base: Path) -> DataSet:
    """The data set for `spec` under `base`, generated unless a complete copy is there."""
    root = base / spec.key
    done = root / "done.json"
    if done.exists():
        return _load(spec, root, json.loads(done.read_text()))
    if root.exists():
        shutil.rmtree(root)
    classes_dir = root / "classes"
    classes_dir.mkdir(parents=True)
    outer = root / "train.tar"
    rng = random.Random(spec.seed)
    names = wnids(spec.classes)
    files = file_bytes = 0
    with outer.open("wb") as raw:
        sink = _HashingWriter(raw)
        with tarfile.open(fileobj=sink, mode="w|", format=tarfile.GNU_FORMAT) as tf:  # type: ignore[call-overload]
            for wnid in names:
                path = classes_dir / f"{wnid}.tar"
                n, b = _write_class(path, wnid, rng, spec)
                files, file_bytes = files + n, file_bytes + b
                with path.open("rb") as f:
                    tf.addfile(_info(f"{wnid}.tar", path.stat().st_size), f)
    os.sync()
    meta = {"spec": asdict(spec), "size": outer.stat().st_size, "sha256": sink.hexdigest(),
            "files": files, "file_bytes": file_bytes}
    done.write_text(json.dumps(meta, indent=1))
    return _load(spec, root, meta)


def _load(spec: Spec, root: Path, meta: dict[str, object]) -> DataSet:
    return DataSet(spec, root, root / "train.tar", root / "classes", int(str(meta["size"])),
                   str(meta["sha256"]), int(str(meta["files"])), int(str(meta["file_bytes"])),
                   wnids(spec.classes))


def _write_class(path: Path, wnid: str, rng: random.Random, spec: Spec) -> tuple[int, int]:
    numbers = sorted(rng.sample(range(1, 40 * spec.files), spec.files))  # neither fixed width nor consecutive
    total = 0
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tf:
        for n in numbers:
            data = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + rng.randbytes(rng.randint(spec.min_size, spec.max_size))
            data += b"\xff\xd9"
            tf.addfile(_info(f"{wnid}_{n}.JPEG", len(data)), io.BytesIO(data))
            total += len(data)
    return spec.files, total


def _info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, MTIME, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


class _HashingWriter(io.RawIOBase):
    def __init__(self, f: io.BufferedWriter) -> None:
        super().__init__()
        self._f = f
        self._h = hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, b: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        self._h.update(b)
        return self._f.write(b)

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def _round_up(n: int, block: int) -> int:
    return -(-n // block) * block
