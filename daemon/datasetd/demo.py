"""`datasetd demo`: a small synthetic ImageNet-shaped data set, served and applied end to end.

The archives are deterministic (fixed seed, mtimes, owners), so manifests/demo.toml
can pin their sha256 like a real manifest pins the published ones.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import io
import random
import socket
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from datasetd import commands
from datasetd.config.parsing import load
from datasetd.errors import UsageError

WNIDS = [  # the first 20 ILSVRC2012 classes in sorted-WNID order
    "n01440764", "n01443537", "n01484850", "n01491361", "n01494475", "n01496331", "n01498041",
    "n01514668", "n01514859", "n01518878", "n01530575", "n01531178", "n01532829", "n01534433",
    "n01537544", "n01558993", "n01560419", "n01580077", "n01582220", "n01592084",
]
MTIME = 1_340_000_000  # ILSVRC2012's year; any fixed value keeps the archives byte-identical
VAL_PER_CLASS = 5


def fake_jpeg(rng: random.Random, size: int) -> bytes:
    return b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + rng.randbytes(size) + b"\xff\xd9"


def tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), MTIME, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def class_tar(wnid: str, rng: random.Random, files: int, size: tuple[int, int]) -> bytes:
    numbers = sorted(rng.sample(range(1, 40 * files), files))  # neither fixed width nor consecutive
    return tar_bytes([(f"{wnid}_{n}.JPEG", fake_jpeg(rng, rng.randint(*size))) for n in numbers])


def build_train(wnids: list[str], seed: int = 2012, files: int = 12, size: tuple[int, int] = (2000, 12000)) -> bytes:
    rng = random.Random(seed)
    return tar_bytes([(f"{w}.tar", class_tar(w, rng, files, size)) for w in wnids])


def build_val(wnids: list[str], seed: int = 2013) -> tuple[bytes, str]:
    """The flat val tar, and the ground truth (ILSVRC ids, 1-based, in file-name order)."""
    rng = random.Random(seed)
    labels = [i for i in range(1, len(wnids) + 1) for _ in range(VAL_PER_CLASS)]
    rng.shuffle(labels)
    names = [f"ILSVRC2012_val_{i:08d}.JPEG" for i in range(1, len(labels) + 1)]
    order = list(range(len(names)))
    rng.shuffle(order)  # members are not in name order inside the real val tar either
    data = tar_bytes([(names[i], fake_jpeg(rng, rng.randint(2000, 9000))) for i in order])
    return data, "".join(f"{label}\n" for label in labels)


def build_devkit(wnids: list[str], ground_truth: str) -> bytes:
    synsets = "".join(f"{i} {w}\n" for i, w in enumerate(wnids, 1))
    root = "ILSVRC2012_devkit_t12"
    return tar_bytes([
        (f"{root}/readme.txt", b"Synthetic devkit for the datasetd demo.\n"),
        (f"{root}/data/synsets.txt", synsets.encode()),
        (f"{root}/data/ILSVRC2012_validation_ground_truth.txt", ground_truth.encode()),
    ])


def build(downloads: Path) -> dict[str, Path]:
    """Write the three demo archives (only those missing) and return their paths."""
    downloads.mkdir(parents=True, exist_ok=True)
    val, truth = build_val(WNIDS)
    archives: dict[str, Callable[[], bytes]] = {
        "ILSVRC2012_img_train.tar": lambda: build_train(WNIDS),
        "ILSVRC2012_img_val.tar": lambda: val,
        "ILSVRC2012_devkit_t12.tar": lambda: build_devkit(WNIDS, truth),
    }
    out = {}
    for name, make in archives.items():
        path = downloads / name
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(make())
            tmp.rename(path)
        out[name] = path
    return out


def find_manifest(explicit: str | None) -> Path:
    if explicit:
        return Path(explicit)
    for base in (Path.cwd(), Path(__file__).resolve().parents[2]):
        candidate = base / "manifests" / "demo.toml"
        if candidate.exists():
            return candidate
    raise UsageError("manifests/demo.toml not found; run from the repository or pass --manifest")


HTTP_PORT = 47801  # fixed, because manifests/demo.toml names it
SEED_PORT = 47802  # likewise ([torrent] peers)


@contextlib.contextmanager
def http_server(directory: Path, port: int = HTTP_PORT) -> Iterator[str]:
    """A plain local web server for the demo's HTTP components (loopback only)."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    try:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    except OSError as e:
        raise UsageError(f"127.0.0.1:{port} is busy ({e.strerror}); the demo's HTTP server needs it") from e
    thread = threading.Thread(target=server.serve_forever, name="demo-http", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def seeder(data: Path, torrent: Path, ip: str = "127.0.0.1", port: int = SEED_PORT) -> Iterator[str]:
    """A local BitTorrent seeder for one file (DHT, LSD, UPnP, NAT-PMP and uTP off: loopback only)."""
    from datasetd.config.manifest import TorrentSettings
    from datasetd.sources.torrent import lt
    from datasetd.sources.torrent.types import AddRequest

    _port_free(ip, port, "the demo's BitTorrent seeder")
    lt.make_torrent(data, torrent)
    settings = TorrentSettings(listen_interfaces=f"{ip}:{port}", dht=False, lsd=False, upnp=False,
                               natpmp=False, utp=False)
    session = lt.Session(settings, stats_interval=1.0)
    try:
        key = lt.read_meta(torrent).key
        lease = session.add(AddRequest(key=key, save_path=data.parent, resume_path=None, torrent_file=torrent))[0]
        deadline = time.monotonic() + 30
        while lease.status().state != "seeding":
            if time.monotonic() > deadline:
                raise UsageError(f"{data}: the demo seeder did not start seeding within 30 s")
            time.sleep(0.05)
        yield f"{ip}:{port}"
    finally:
        session.close(timeout=2.0)


def _port_free(ip: str, port: int, who: str) -> None:
    with socket.socket() as s:
        try:
            s.bind((ip, port))
        except OSError as e:
            raise UsageError(f"{ip}:{port} is busy ({e.strerror}); {who} needs it") from e


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def main(manifest_arg: str | None) -> int:
    path = find_manifest(manifest_arg)
    manifest = load(path)
    sources = manifest.root / "sources"
    archives = build(sources)
    print(f"demo: {len(archives)} archives in {sources}")
    torrent = sources / "ILSVRC2012_img_val.torrent"
    with http_server(sources) as url, seeder(archives["ILSVRC2012_img_val.tar"], torrent) as peer:
        print(f"demo: train from a local file, val from a BitTorrent seeder at {peer}, "
              f"the devkit from {url}; applying {path}")
        code = commands.apply(manifest)
    print(commands.render_status(commands.current_status(manifest)))
    return code
