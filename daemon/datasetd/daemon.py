"""`datasetd run`: the long-running reconcile loop (issue 6 builds it out)."""

from __future__ import annotations

import threading
from pathlib import Path

from datasetd import commands
from datasetd.manifest import Manifest


def run(path: Path, manifest: Manifest, stop: threading.Event) -> int:
    return commands.apply(manifest)
