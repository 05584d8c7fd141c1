"""Row 8: the no-op apply at ImageNet scale — a converged tree of ~1 M empty files in 1,000 classes.

The tree is made the way a user's would be: datasetd applies a tar of class tars of empty
files (cheap to generate: headers only), then converges once more, which keeps each class
folder's directory fingerprint. The timed runs are the no-op applies after that, cold and
warm, and the row projects them to ILSVRC2012's 1,281,167 files: the fast path stats one
directory per class, so the time follows the class count, not the file count (projected
as time x 1.28, an upper bound).
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import tarfile
import time
from pathlib import Path

import baselines as bl
import measure
from report import Row, absolute_row

ILSVRC_FILES = 1_281_167
TARGET_S = 2.0


def noop_rows(ctx: object, base: Path, files: int, classes: int, reps: int, cold: bool,
              logs: Path) -> list[Row]:
    outer = _ensure_tree_tar(base / "data" / f"noop-{files}-{classes}", files, classes)
    work = base / "work" / "noop"
    subprocess.run(["rm", "-rf", str(work)], check=True)
    work.mkdir(parents=True)
    manifest = work / "bench.toml"
    digest = hashlib.sha256(outer.read_bytes()).hexdigest()
    manifest.write_text(f'version = 1\nroot = "{work / "root"}"\n[daemon]\nworkers = 2\n'
                        f'[components.train]\nsource = "file"\npath = "{outer}"\nsha256 = "{digest}"\n'
                        'unpack = "class-tars"\ninto = "train"\n')
    first = measure.run("datasetd-noop-first", bl.datasetd_apply(manifest), cold=False, log=logs / "noop-first.log",
                        timeout=7200)
    if first.rc != 0:
        raise RuntimeError(f"row 8: the first apply failed (exit {first.rc}); see {logs / 'noop-first.log'}")
    time.sleep(1.5)  # past the racy window: the next no-op keeps every class's fingerprint
    measure.run("datasetd-noop-settle", bl.datasetd_apply(manifest), cold=False, log=logs / "noop-settle.log")
    runs: dict[bool, list[measure.Run]] = {True: [], False: []}
    for rep in range(reps):
        for c in ((True, False) if cold else (False,)):
            label = f"datasetd-noop-{'cold' if c else 'warm'}"
            runs[c].append(measure.run(label, bl.datasetd_apply(manifest), cold=c, log=logs / f"{label}-{rep}.log"))
    subprocess.run(["rm", "-rf", str(work)], check=True)
    rows = []
    scale = ILSVRC_FILES / files
    for c, got in runs.items():
        if not got:
            continue
        row = absolute_row(f"8 no-op apply, converged tree of {files:,} files / {classes:,} classes "
                           f"({'cold' if c else 'warm'}), x{scale:.2f} -> ILSVRC2012", got, TARGET_S / scale)
        row["projected_ilsvrc2012_s"] = round(sorted(r.seconds for r in got)[len(got) // 2] * scale, 2)
        row["target"] = f"< {TARGET_S} s projected"
        row["first_apply_s"] = round(first.seconds, 1)
        rows.append(row)
    return rows


def _ensure_tree_tar(folder: Path, files: int, classes: int) -> Path:
    outer = folder / "train.tar"
    if outer.exists():
        return outer
    folder.mkdir(parents=True, exist_ok=True)
    per = files // classes
    tmp = outer.with_suffix(".tmp")
    with tarfile.open(tmp, "w", format=tarfile.GNU_FORMAT) as out:
        for c in range(classes):
            wnid = f"n{20000000 + c:08d}"
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as inner:
                for i in range(per):
                    info = tarfile.TarInfo(f"{wnid}_{i}.JPEG")
                    info.mode, info.mtime = 0o644, 1_300_000_000
                    inner.addfile(info)
            info = tarfile.TarInfo(f"{wnid}.tar")
            info.size, info.mode, info.mtime = buf.tell(), 0o644, 1_300_000_000
            buf.seek(0)
            out.addfile(info, buf)
    tmp.rename(outer)
    return outer
