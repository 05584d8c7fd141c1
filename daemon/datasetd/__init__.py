"""datasetd: make large training datasets appear on disk, complete and verified.

    import datasetd
    datasetd.wait("imagenet.toml", components=["train", "val"], timeout=3600)

blocks until those components are ready (see datasetd.waiting.wait).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable

__version__ = "0.1.0"


def wait(manifest_path: str | Path, components: Iterable[str] | None = None,
         timeout: float | None = None) -> dict[str, str]:
    """Block until the manifest's components are ready; raise on error or timeout (datasetd.waiting.wait)."""
    # Imported by name at call time: `import datasetd` (every module reads __version__) stays cheap and
    # does not make the lower layers depend on the top one.
    waiting = importlib.import_module("datasetd.waiting")
    result: dict[str, str] = waiting.wait(manifest_path, components, timeout)
    return result
