"""The manual recipe's one-off script, as people write it: per class tar, sequential extractall.

usage: recipe_extract.py CLASS_TAR_DIR OUT_DIR   (one sync at the end, nothing verified)
"""

from __future__ import annotations

import os
import sys
import tarfile
from pathlib import Path


def main(classes: Path, out: Path) -> int:
    for tar in sorted(classes.glob("*.tar")):
        folder = out / tar.name.removesuffix(".tar")
        folder.mkdir(parents=True)
        with tarfile.open(tar) as tf:
            tf.extractall(folder, filter="data")
    os.sync()
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
