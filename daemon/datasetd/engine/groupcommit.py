"""The flush between "verified" and VERIFIED, on a thread of its own so the reactor never waits for it.

Where it sits: the executor collects units verified since the last commit; when a
batch is due it hands the batch to `GroupCommit.start`, goes on completing and
submitting steps while one `syncfs` per filesystem runs here, and once `finished`
returns the batch it records VERIFIED each unit whose archive is proved (the rest
wait for the verdict, flushed; the journal stays the executor's alone). A syncfs
of half a gigabyte takes most of a second: done on the reactor's thread it left
the workers without new units that long (they were 30-40 % busy). Only one flush
runs at a time; units verified meanwhile wait for the next.
"""

from __future__ import annotations

import concurrent.futures as cf
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Generic, TypeVar

from datasetd import platform
from datasetd.config.manifest import Manifest

K = TypeVar("K")


def flush(paths: Sequence[Path]) -> None:
    # After this returns, every extracted file and directory rename of the batch survives power
    # loss: only then may the batch be recorded VERIFIED and its tars be deleted.
    for path in paths:
        platform.syncfs(path)


def filesystems(manifest: Manifest, components: Iterable[str]) -> list[Path]:
    """One path on each filesystem the batch's components wrote to (their `into`, and the state
    directory where the journal and digest lists are): what one flush must cover."""
    seen: dict[int, Path] = {}
    for name in components:
        for path in (manifest.components[name].into, manifest.state_dir):
            if path is not None and path.exists():
                seen.setdefault(path.stat().st_dev, path)
    return list(seen.values())


class GroupCommit(Generic[K]):
    def __init__(self) -> None:
        self._pool: cf.ThreadPoolExecutor | None = None  # made at the first flush, gone at close
        self._running: tuple[cf.Future[None], list[K]] | None = None

    @property
    def future(self) -> cf.Future[None] | None:
        """The flush in flight, for the reactor to wake on."""
        return self._running[0] if self._running is not None else None

    def start(self, batch: list[K], paths: Sequence[Path]) -> None:
        assert self._running is None, "one flush at a time"
        if self._pool is None:
            self._pool = cf.ThreadPoolExecutor(1, thread_name_prefix="commit")
        self._running = (self._pool.submit(flush, list(paths)), batch)

    def finished(self, wait: bool = False) -> list[K] | None:
        """The batch whose flush has returned (its error raised here), or None while it runs."""
        if self._running is None:
            return None
        future, batch = self._running
        if not wait and not future.done():
            return None
        self._running = None
        future.result()
        return batch

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
