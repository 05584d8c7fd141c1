"""Benchmarks: see bench/README.md. (Being built: issue 7.)"""

from __future__ import annotations

import sys


def main() -> int:
    print("bench: not built yet (issue 7)", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
