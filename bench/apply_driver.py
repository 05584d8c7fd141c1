"""`datasetd apply` with the transports built by the registry, as the CLI builds them.

usage: apply_driver.py MANIFEST        (exit status as `datasetd apply`; JSON log on stderr)
"""

from __future__ import annotations

import sys

from datasetd import commands, logs
from datasetd.config.parsing import load
from datasetd.sources.registry import close_sources, make_sources


def main(path: str) -> int:
    logs.configure(json=True, level="info")
    manifest = load(path)
    srcs = make_sources(manifest)
    try:
        return commands.apply(manifest, sources=srcs)
    finally:
        close_sources(srcs)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
