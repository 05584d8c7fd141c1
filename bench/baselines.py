"""The commands datasetd is compared with, and the datasetd invocations themselves.

Every baseline ends with one `sync`, so it pays for making its bytes durable
once, as datasetd does with its group commit; none of them verifies anything.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path

from gen import DataSet

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
PYTHON = Path(sys.executable)
DATASETD = PYTHON.parent / "datasetd"

# Class tars already split out; GNU tar extracts them `jobs` at a time.
PARALLEL_TAR = r"""
set -e
out="$1"; classes="$2"; jobs="$3"
mkdir -p "$out"
find "$classes" -maxdepth 1 -name '*.tar' -print0 |
  xargs -0 -P "$jobs" -n 1 sh -c 'w=$(basename "$1" .tar); mkdir -p "$0/$w" && tar -xf "$1" -C "$0/$w"' "$out"
sync
"""

# The manual recipe, step 3: untar the train tar, then each class tar in turn into a folder
# named after it, renaming the tar with a Z_ prefix once done.
TWO_STAGE_TAR = r"""
set -e
outer="$1"; train="$2"
mkdir -p "$train"
tar -xf "$outer" -C "$train"
for t in "$train"/*.tar; do
  w=$(basename "$t" .tar)
  mkdir "$train/$w"
  tar -xf "$t" -C "$train/$w"
  mv "$t" "$train/Z_$w.tar"
done
sync
"""


def parallel_tar(ds: DataSet, out: Path, jobs: int) -> list[str]:
    return ["sh", "-c", PARALLEL_TAR, "parallel-tar", str(out), str(ds.classes_dir), str(jobs)]


def two_stage_tar(ds: DataSet, train: Path) -> list[str]:
    return ["sh", "-c", TWO_STAGE_TAR, "two-stage-tar", str(ds.outer), str(train)]


def floor_probe(ds: DataSet, out: Path, jobs: int, digest: bool) -> list[str]:
    return [str(PYTHON), str(BENCH / "floor_probe.py"), str(ds.outer), str(out), str(jobs),
            *(["--digest"] if digest else [])]


def recipe_python(ds: DataSet, out: Path) -> list[str]:
    return [str(PYTHON), str(BENCH / "recipe_extract.py"), str(ds.classes_dir), str(out)]


def class_tars_manifest(ds: DataSet, root: Path, workers: int) -> str:
    return f"""version = 1
root = "{root}"

[daemon]
workers = {workers}

[components.train]
source = "file"
path = "{ds.outer}"
size = {ds.size}
sha256 = "{ds.sha256}"
unpack = "class-tars"
into = "train"
"""


def datasetd_apply(manifest: Path) -> list[str]:
    return [str(DATASETD), "--log-format", "json", "apply", str(manifest)]


def phases(log: Path) -> dict[str, float]:
    """Seconds from apply.started to the index and to convergence, from datasetd's JSON log."""
    first: dict[str, float] = {}
    for line in log.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
            at = datetime.fromisoformat(rec["timestamp"]).timestamp()
        except (ValueError, KeyError, TypeError):
            continue
        first.setdefault(rec.get("event", ""), at)
        if rec.get("event") in ("class.extracted", "class.verified", "apply.converged"):
            first[f"last:{rec['event']}"] = at
    start = first.get("apply.started")
    if start is None:
        return {}
    out = {}
    for key, name in (("archive.indexed", "index_s"), ("last:class.extracted", "last_extract_s"),
                      ("last:class.verified", "last_verified_s"), ("apply.converged", "converged_s")):
        if key in first:
            out[name] = round(first[key] - start, 3)
    return out


def count_files(path: Path) -> int:
    n = 0
    for p in path.rglob("*"):
        n += p.is_file() and not p.name.endswith(".tar")
    return n
