"""structlog configuration, and the one list of event names datasetd emits.

Names are `noun.past_verb` and stable: scripts and alerts may match on them.
JSON lines when stderr is not a terminal (systemd's journal, pipes, files),
readable console lines when it is.
"""

from __future__ import annotations

import collections
import contextlib
import importlib
import logging
import sys
import threading
import types
from collections.abc import Iterator
from typing import Any, TextIO


@contextlib.contextmanager
def without_extras(*names: str) -> Iterator[None]:
    """Imports inside see the optional packages `names` as not installed.

    Some libraries import every optional extra they find when they are imported: structlog
    imports rich (for tracebacks we never render with it), httpx imports click, rich and pygments
    (for its command-line client). Read from a cold page cache that is ~0.1-0.15 s of every
    `datasetd apply` that never uses them. A package already imported is left alone (it costs
    nothing more). Only for imports at module load, before any thread could import `names`.
    """
    hidden = [n for n in names if n not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # `import name` raises ImportError
    try:
        yield
    finally:
        for name in hidden:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]  # a later `import rich` (the terminal display) finds it again


class _Deferred(types.ModuleType):
    """What an importer inside `deferring` holds instead of the module: the real one is imported
    at the first attribute read, and every later read goes through to it."""

    def __getattr__(self, attr: str) -> Any:
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]  # read while still deferring: import the real one all the same
        return getattr(importlib.import_module(self.__name__), attr)


@contextlib.contextmanager
def deferring(*names: str) -> Iterator[None]:
    """Imports inside get, for each module in `names`, a stand-in that imports the real module when
    the importer first reads an attribute of it. For a library that imports a module at its top but
    uses it only inside functions datasetd never calls: structlog imports asyncio for its async log
    methods, 31 modules with ssl and libssl among them, ~0.06 s of every cold `datasetd apply` (the
    stdlib datasetd needs, cold, four runs each: 0.226 s, with asyncio 0.290 s). Outside, `import
    asyncio` is the real thing: the stand-ins leave sys.modules on the way out."""
    standins = {name: _Deferred(name) for name in names if name not in sys.modules}
    sys.modules.update(standins)
    try:
        yield
    finally:
        for name, standin in standins.items():
            if sys.modules.get(name) is standin:
                del sys.modules[name]


with without_extras("rich"), deferring("asyncio"):
    import structlog

EVENTS: dict[str, str] = {
    "apply.started": "a reconcile pass began (manifest path and hash, workers)",
    "apply.progress": "periodic one-line summary of a long pass: units done/total, bytes, rate",
    "apply.converged": "every enabled component is ready",
    "apply.failed": "the pass ended with components in error (each listed)",
    "apply.stopped": "a stop was requested; in-flight steps finished or were abandoned safely",
    "space.checked": "predicted need vs free space per filesystem",
    "archive.indexed": "an archive's units were listed (hashed and matched to its pins, or, for a pinned tar of "
                       "class tars, from its headers alone: archive.proved follows)",
    "archive.proved": "a pinned archive indexed from its headers was hashed while its units were extracted, and "
                      "matched its pins (units_started: unit steps begun before the verdict)",
    "archive.refused": "an archive hashed while its units were extracted broke its pin: those units are forgotten "
                       "(their folders stay unrecorded), nothing was deleted",
    "archive.unpinned": "an archive has no sha256/md5 in the manifest; the computed sha256 is logged to pin it",
    "archive.deleted": "a downloaded archive was removed after everything from it was verified",
    "class.extracted": "a class tar was extracted (files, bytes) and its digests recorded",
    "class.adopted": "a class folder of unknown provenance matched its tar byte for byte and was adopted",
    "class.replaced": "a class folder that did not match its tar was replaced by a fresh extraction",
    "class.marked": "a class tar was renamed W.tar -> Z_W.tar after its folder was recorded",
    "class.verified": "a class folder was re-read, matched its record, and flushed to disk",
    "class.tar_deleted": "a class tar was deleted after its folder was verified and durable",
    "tree.extracted": "a flat tar was extracted into its directory and its digests recorded",
    "val.arranged": "a verified flat val tree was moved into <wnid>/ folders; records, classes.tsv, labels written",
    "tree.adopted": "an existing directory matched its flat tar and was adopted",
    "tree.replaced": "a directory that did not match its flat tar was replaced",
    "tree.verified": "a flat tar's directory was re-read, matched, and flushed to disk",
    "journal.rebuilt": "the journal was damaged (not a database, cut short, a bad page at open or mid-run): "
                       "moved aside and rebuilt by re-proving the tree against its archives",
    "hook.finished": "an on_ready/on_error hook exited 0 (hook, component, phase)",
    "hook.failed": "a hook could not start, exited non-zero (stderr tail) or was killed at hook_timeout; "
                   "the component is not affected",
    "web.started": "the read-only status page listens (address, url)",
    "status.unwritable": "status.json could not be written (full disk?); work goes on, status resumes later",
    "step.failed": "an action failed permanently; the message says what to do",
    "step.retrying": "an action failed temporarily and will be retried after a delay",
    "digests.rewritten": "a deleted sha256sum list under .datasetd/sha256/ was written again from the journal",
    "delete.reproved": "before a delete, its dependent folders were proved (by fingerprint, or re-hashed)",
    "delete.refused": "a tar or archive was kept: a folder that depends on it no longer matches its record",
    "verify.mismatch": "deep verification found a file that differs from its record",
    "verify.clean": "deep verification re-hashed a unit and found it intact",
    "verify.repaired": "a unit that failed verification was re-extracted",
    "download.started": "an HTTP download began",
    "download.resumed": "an HTTP download continued from a partial file",
    "download.restarted": "an HTTP download restarted from zero (validator changed or Range ignored)",
    "download.retrying": "an HTTP request failed temporarily and will be retried",
    "download.failed_over": "an HTTP download moved to the next mirror",
    "download.completed": "an HTTP download finished and matched its pins",
    "download.gave_up": "an HTTP download made no progress for max_attempts tries; retried on the next pass",
    "download.digest_mismatch": "a downloaded file did not match its pinned digest",
    "torrent.added": "a torrent was added to the session",
    "torrent.metadata_received": "a magnet's metadata arrived from peers",
    "torrent.resumed": "a torrent was loaded from its resume data",
    "torrent.rechecking": "libtorrent is re-hashing pieces on disk",
    "torrent.health": "the swarm's health changed; carries a hint a user can act on",
    "torrent.stalled": "no progress for the stall timeout",
    "torrent.fell_back": "web seeds or HTTP mirrors were enabled after a stall",
    "torrent.completed": "a torrent's file finished and matched datasetd's own digest (hashed_in_order: taken "
                         "in file order as the pieces passed; hashed_ahead: its bytes when the last piece "
                         "passed; verify_seconds: from then to the digest; pieces_failed: hash failures from peers)",
    "torrent.digest_mismatch": "a torrent's finished file failed datasetd's digest; a recheck follows",
    "torrent.file_reread": "the digest taken in order as pieces passed could not be used (a piece's bytes in the "
                           "file never matched the torrent's SHA-1, or the digest differs from the pin): the whole "
                           "file is read and hashed instead",
    "torrent.resume_saved": "resume data was written",
    "torrent.lab_ranked": "lab fan-out: this node's rank among the lab's addresses and its share of pieces",
    "torrent.flush_timed_out": "libtorrent did not confirm its disk writes in time; the file is hashed anyway",
    "torrent.lab_redealt": "lab fan-out: the members that are up changed; the down ones' shares went to the others",
    "torrent.lab_phase_started": "lab fan-out: own share done, now taking the pieces lab peers hold",
    "torrent.lab_opened": "lab fan-out: stopped waiting for the lab; every piece is wanted from anyone",
    "torrent.outsiders_held": "lab fan-out: peers outside the lab are blocked while the lab shares",
    "torrent.outsiders_released": "lab fan-out: peers outside the lab are allowed again",
    "torrent.disk_retried": "a disk problem went away; the paused torrent resumed",
    "torrent.mirrors_skipped": "HTTP mirrors cannot serve a multi-file torrent; only web seeds are used",
    "torrent.resume_save_failed": "libtorrent could not produce resume data (the next start rechecks)",
    "torrent.resume_save_timed_out": "close() stopped waiting for resume data",
    "torrent.resume_unreadable": "a resume file was unusable; libtorrent checks the files instead",
    "torrent.listen_failed": "a listen socket failed (port in use, permission): see the hint",
    "torrent.alert_failed": "handling one libtorrent alert raised (logged with its traceback)",
    "torrent.seeding_stopped": "the seed ratio or time was reached; the torrent was removed",
    "daemon.started": "`datasetd run` started",
    "daemon.reloaded": "the manifest was reloaded (edit or SIGHUP)",
    "daemon.reload_failed": "an edited manifest was invalid; the last good one keeps running",
    "daemon.stopping": "SIGTERM/SIGINT received; stopping within stop_timeout",
    "daemon.stopped": "`datasetd run` stopped cleanly; status.json says \"stopped\"",
    "daemon.stalled": "the running job showed no sign of life for 10 minutes; watchdog pings withheld",
    "daemon.stop_overran": "a job outlived stop_timeout + 5 s; the daemon exits anyway (every step survives a kill)",
    "notify.failed": "an sd_notify message could not be sent (socket gone or refused); logged once",
    "apply.aborted": "a reconcile pass raised (e.g. no space); the daemon stays up and retries on the next trigger",
    "verify.started": "a scheduled deep verification began (units, bytes)",
    "verify.finished": "a deep verification ended (units checked, mismatched, stopped early or not)",
    "verify.aborted": "a deep verification raised; the next scheduled one tries again",
    "metrics.started": "the Prometheus endpoint listens (address, with port 0 resolved)",
    "source.close_failed": "a transport's close() raised at shutdown (resume data may be older)",
    "watch.fell_back": "inotify is unavailable; the manifest is polled every 2 s instead",
}


class _Stderr:
    """Whatever sys.stderr is at write time (tests and daemons may swap it after configure)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


_RECENT: collections.deque[dict[str, Any]] = collections.deque(maxlen=200)
_RECENT_LOCK = threading.Lock()


def _remember(logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    """Keep the last events in memory for the web status page (service/web.py): a copy, so
    the renderers after this processor cannot change what is kept."""
    with _RECENT_LOCK:
        _RECENT.append({k: v for k, v in event.items() if isinstance(v, str | int | float | bool | None)})
    return event


def recent_events() -> list[dict[str, Any]]:
    """The last events logged in this process, oldest first (each with event, level, timestamp)."""
    with _RECENT_LOCK:
        return list(_RECENT)


def configure(*, json: bool | None = None, level: str = "info", stream: TextIO | None = None) -> None:
    out: Any = stream or _Stderr()
    # httpx logs full request URLs at INFO; a signed query string must never reach a log.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    use_json = json if json is not None else not (stream or sys.stderr).isatty()
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _remember,
    ]
    if use_json:
        processors += [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    else:
        processors += [structlog.dev.ConsoleRenderer(colors=False)]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )


def get() -> Any:
    return structlog.get_logger("datasetd")
