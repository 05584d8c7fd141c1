"""Rows 3 (HTTP from a private nginx) and 4 (BitTorrent over loopback): datasetd vs curl / bare libtorrent.

Both fetch the large set's train tar (>= 1 GB) into a fresh root, pinned by
size and sha256, with `unpack = "none"`. A source that is not importable or
fails turns its rows into PENDING with the reason, never a crash of the bench.
"""

from __future__ import annotations

import dataclasses
import importlib
import shutil
import subprocess
from pathlib import Path

import baselines as bl
import measure
from gen import DataSet
from nginx import Nginx, NginxUnavailable, free_port
from report import Row, compare_row, pending_row
from rows_unpack import BenchError, Ctx, fresh, rotate

SEGMENT_THRESHOLD = 64 * 1024 * 1024
PIECE = 4 * 1024 * 1024
HTTP_NAMES = ("3 HTTP single stream: datasetd (connections = 1) vs curl",
              "3b HTTP segmented: datasetd (connections = 4) vs curl")
HTTP_REPS = 5  # at least: see http_rows
TORRENT_NAME = "4 BitTorrent loopback: datasetd vs bare libtorrent script"
TORRENT_FLOOR_NAMES = ("4b BitTorrent: the bare leecher + the pin's sha256 in piece order (the floor) vs bare",
                       "4c BitTorrent: datasetd vs the floor of a verified download (row 4b)")


def _missing(module: str, attr: str) -> str | None:
    try:
        mod = importlib.import_module(module)
    except Exception as e:
        return f"{module} does not import yet: {type(e).__name__}: {e}"
    return None if hasattr(mod, attr) else f"{module}.{attr} does not exist yet"


def _fetch_variant(ctx: Ctx, ds: DataSet, label: str, rep: int, manifest_text: str, target: str) -> measure.Run:
    work = fresh(ctx.work / label)
    root = work / "root"
    manifest = work / "bench.toml"
    manifest.write_text(manifest_text.format(root=root))
    log = ctx.logs / f"{label}-{rep}.log"
    r = measure.run(label, [str(bl.PYTHON), str(bl.BENCH / "apply_driver.py"), str(manifest)], cold=ctx.cold,
                    log=log)
    _check_file(r, log, root / target, ds)
    shutil.rmtree(work)
    return r


def _check_file(r: measure.Run, log: Path, path: Path, ds: DataSet) -> None:
    if r.rc != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
        raise BenchError(f"{r.label} exited with {r.rc}: {tail[0][:300] if tail else ''} (log {log})")
    if not path.exists() or path.stat().st_size != ds.size:
        raise BenchError(f"{r.label}: {path} missing or of the wrong size; see {log}")


# ---- HTTP ------------------------------------------------------------------------------------

HTTP_MANIFEST = """version = 1
root = "{{root}}"

[daemon]
workers = 2

[components.train]
source = "http"
url = "{url}"
file = "downloads/train.tar"
connections = {connections}
segment_threshold = {threshold}
size = {size}
sha256 = "{sha256}"
"""


def http_rows(ctx: Ctx, ds: DataSet) -> list[Row]:
    why = _missing("datasetd.sources.http.fetcher", "HttpFetcher")
    if why:
        return [pending_row(n, why) for n in HTTP_NAMES]
    ctx.say(f"row 3: HTTP, {ds.size / 1e9:.2f} GB from nginx on 127.0.0.1")
    try:
        with Nginx(ctx.work / "nginx", ds.dir) as server:
            return _http_measure(ctx, ds, server.url(ds.outer.name))
    except (NginxUnavailable, BenchError) as e:
        return [pending_row(n, str(e)) for n in HTTP_NAMES]
    finally:
        shutil.rmtree(ctx.work / "nginx", ignore_errors=True)


def _http_measure(ctx: Ctx, ds: DataSet, url: str) -> list[Row]:
    def datasetd(connections: int, rep: int) -> dict[str, measure.Run]:
        text = HTTP_MANIFEST.format(url=url, connections=connections, threshold=SEGMENT_THRESHOLD,
                                    size=ds.size, sha256=ds.sha256)
        label = f"datasetd-http-{connections}"
        return {label: _fetch_variant(ctx, ds, label, rep, text, "downloads/train.tar")}

    def curl(rep: int) -> dict[str, measure.Run]:
        work = fresh(ctx.work / "curl")
        dest = work / "train.tar"
        log = ctx.logs / f"curl-{rep}.log"
        r = measure.run("curl", ["sh", "-c", 'curl -sS --fail -o "$1" "$2" && sync', "curl", str(dest), url],
                        cold=ctx.cold, log=log)
        _check_file(r, log, dest, ds)
        shutil.rmtree(work)
        return {"curl": r}

    # One GB to disk and a sync swings far on both sides (seven reps: datasetd 1.68-5.61 s, curl
    # 1.83-2.78 s): a median of three landed anywhere in 0.88-1.24. At least five, as for row 4.
    runs = rotate(dataclasses.replace(ctx, reps=max(ctx.reps, HTTP_REPS)),
                  {"single": lambda rep: datasetd(1, rep), "segmented": lambda rep: datasetd(4, rep), "curl": curl})
    return [compare_row(HTTP_NAMES[0], runs["datasetd-http-1"], runs["curl"], "curl -o + sync", 1.1),
            compare_row(HTTP_NAMES[1], runs["datasetd-http-4"], runs["curl"], "curl -o + sync (one stream)", 1.0)]


# ---- BitTorrent ------------------------------------------------------------------------------

TORRENT_REPS = 5  # at least: see _torrent_measure
TORRENT_MANIFEST = """version = 1
root = "{{root}}"

[daemon]
workers = 2

[torrent]
listen_interfaces = "127.0.0.1:{port}"
dht = false
lsd = false
utp = false
upnp = false
natpmp = false
peers = ["{peer}"]

[components.train]
source = "torrent"
torrent = "{torrent}"
file = "{file}"
save_path = "downloads"
size = {size}
sha256 = "{sha256}"
"""


def torrent_rows(ctx: Ctx, ds: DataSet) -> list[Row]:
    why = _missing("datasetd.sources.torrent.fetcher", "TorrentFetcher")
    if why:
        return [pending_row(TORRENT_NAME, why)]
    ctx.say(f"row 4: BitTorrent, {ds.size / 1e9:.2f} GB over loopback")
    torrent = ds.dir / f"train-{PIECE >> 20}M.torrent"
    if not torrent.exists():
        subprocess.run([str(bl.PYTHON), str(bl.BENCH / "bt.py"), "make", str(ds.outer), str(torrent), str(PIECE)],
                       check=True)
    seed_port = free_port()
    seeder = subprocess.Popen([str(bl.PYTHON), str(bl.BENCH / "bt.py"), "seed", str(torrent), str(ds.dir),
                               f"127.0.0.1:{seed_port}"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert seeder.stdout is not None
        if seeder.stdout.readline().strip() != "ready":
            return [pending_row(TORRENT_NAME, "the bench's seeder did not start")]
        return _torrent_measure(ctx, ds, torrent, f"127.0.0.1:{seed_port}")
    except BenchError as e:
        return [pending_row(TORRENT_NAME, str(e))]
    finally:
        assert seeder.stdin is not None
        seeder.stdin.close()
        try:
            seeder.wait(timeout=15)
        except subprocess.TimeoutExpired:
            seeder.kill()
            seeder.wait()


def _torrent_measure(ctx: Ctx, ds: DataSet, torrent: Path, peer: str) -> list[Row]:
    def datasetd(rep: int) -> dict[str, measure.Run]:
        text = TORRENT_MANIFEST.format(port=free_port(), peer=peer, torrent=torrent, file=ds.outer.name,
                                       size=ds.size, sha256=ds.sha256)
        return {"datasetd-torrent": _fetch_variant(ctx, ds, "datasetd-torrent", rep, text,
                                                  f"downloads/{ds.outer.name}")}

    def bare(rep: int | str, digest: bool = False) -> dict[str, measure.Run]:
        label = "bare-libtorrent-sha256" if digest else "bare-libtorrent"
        work = fresh(ctx.work / label)
        log = ctx.logs / f"{label}-{rep}.log"
        argv = [str(bl.PYTHON), str(bl.BENCH / "bt.py"), "fetch", str(torrent), str(work),
                f"127.0.0.1:{free_port()}", peer, *([ds.sha256] if digest else [])]
        r = measure.run(label, argv, cold=ctx.cold, log=log)
        _check_file(r, log, work / ds.outer.name, ds)
        shutil.rmtree(work)
        return {label: r}

    # The seeder's first transfer after it started is 1-1.5 s slower, whoever takes it (bare: 6.3 s,
    # then 4.5-4.9 s): the rotation starts with datasetd, so that fell on datasetd's first rep in
    # every run. One untimed transfer first, and every timed one meets a seeder already serving.
    ctx.say(f"  warm-up: one untimed bare fetch, {bare('warmup')['bare-libtorrent'].seconds:.2f}s")
    # Transfers over loopback swing +-15 % run to run on both sides (seven pairs: datasetd 3.91-4.90 s,
    # bare 3.35-4.49 s, medians 1.05 apart): a median of three landed anywhere in 0.95-1.24.
    # 4b: the bare leecher hashing the file in piece order as the pieces pass libtorrent's check,
    # which a download proved against a pinned sha256 cannot leave out (on 2 cores beside the seeder
    # and the leecher's own SHA-1): the floor, as row 1e is for row 1.
    runs = rotate(dataclasses.replace(ctx, reps=max(ctx.reps, TORRENT_REPS)),
                  {"datasetd": datasetd, "bare": bare, "floor": lambda rep: bare(rep, digest=True)})
    d, b, floor = runs["datasetd-torrent"], runs["bare-libtorrent"], runs["bare-libtorrent-sha256"]
    return [compare_row(TORRENT_NAME, d, b, "bare libtorrent leecher, default settings; sync", 1.1),
            compare_row(TORRENT_FLOOR_NAMES[0], floor, b, "bare leecher, no digest", None),
            compare_row(TORRENT_FLOOR_NAMES[1], d, floor, "bare leecher + sha256 in piece order", None)]
