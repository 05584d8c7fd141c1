"""The verbs behind the CLI: plan, apply, status, verify. Each returns an exit code."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from datasetd import logs
from datasetd.archive.headers import count_members
from datasetd.config.manifest import Manifest
from datasetd.core.costs import Need, fetch_bytes, space_needs, traffic
from datasetd.core.model import Action, Observed, TarCount
from datasetd.core.planning import plan as make_plan
from datasetd.core.summary import human_bytes, summarize
from datasetd.engine import digestlists
from datasetd.engine import report as report_mod
from datasetd.engine.deepverify import Pace, account_for_manifest, verify_units
from datasetd.engine.executor import Executor
from datasetd.engine.stepstate import Outcome
from datasetd.service.hooks import Hooks, last_phases
from datasetd.sources.base import Source
from datasetd.sources.registry import close_sources, make_sources
from datasetd.state import status as status_mod
from datasetd.state.access import share_state
from datasetd.state.journal import JOURNAL_NAME, JournalDB, rebuilding
from datasetd.state.journal_file import damage
from datasetd.state.lock import RootLock, held_elsewhere
from datasetd.state.observe import observe
from datasetd.state.space import space_report
from datasetd.state.status import StatusBoard

EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C


def open_journal(manifest: Manifest, create: bool = True, full_check: bool = False) -> JournalDB:
    """The root's journal; without `create` (plan, status: no lock held) an absent or damaged one reads
    as empty, and only a verb holding the lock moves a damaged journal aside. Readers open it read-only,
    so another user in the root's group can read it. `full_check`: every page first (verify)."""
    if create:
        journal = JournalDB(manifest.state_dir, full_check)
        share_state(manifest.state_dir, manifest.root)
        return journal
    path = manifest.state_dir / JOURNAL_NAME
    if not path.exists() or damage(path) is not None:
        return JournalDB.in_memory()
    return JournalDB.read_only(manifest.state_dir)


def plan(manifest: Manifest, as_json: bool = False) -> int:
    journal = open_journal(manifest, create=False)
    observed = observe(manifest, journal)
    actions = make_plan(manifest, observed)
    moved = traffic(actions, manifest, observed)
    needs = space_needs(manifest, observed, _header_counts(manifest, observed))
    report = space_report(needs)
    per_component = _per_component(manifest, observed, needs)
    counts: dict[str, int] = {}
    for a in actions:
        counts[f"{a.component}:{a.kind}"] = counts.get(f"{a.component}:{a.kind}", 0) + 1
    fits = all(fs.fits for fs in report)
    blocked = [str(getattr(a, "reason", "")) for a in actions if getattr(a, "reason", None)]
    unwritable = root_unwritable(manifest)
    ok = fits and not blocked and unwritable is None
    if as_json:
        print(json.dumps({"actions": [_describe(a) for a in actions], "counts": counts,
                          "read_bytes": moved.read, "write_bytes": moved.write, "components": per_component,
                          "space": [fs.__dict__ | {"fits": fs.fits} for fs in report],
                          "blocked": blocked, "root_unwritable": unwritable, "ok": ok}, indent=2))
        return 0 if ok else 1
    if not actions:
        print("nothing to do: every enabled component is converged")
    for name, c in per_component.items():
        inodes = f"{c['need_inodes']:,} inodes" if c["inodes_known"] else "inodes unknown until indexed"
        n = c["fetch_bytes"]
        fetch = "an unpinned size" if n is None else f"{human_bytes(n)} ({n:,} B)"
        print(f"  {name:<16} fetch {fetch}, needs {human_bytes(c['need_bytes'])} and {inodes}")
    for key, n in sorted(counts.items()):
        comp, kind = key.split(":")
        print(f"  {comp:<16} {kind:<16} x{n}")
    for a in actions:
        reason = getattr(a, "reason", None)
        if reason:
            print(f"  blocked: {reason}")
    print(f"next steps read {human_bytes(moved.read)}, write {human_bytes(moved.write)}")
    for fs in report:
        inodes = f"{fs.need_inodes:,} inodes" if fs.inodes_known else "inodes unknown until indexed"
        verdict = "fits" if fs.fits else "DOES NOT FIT"
        print(f"{fs.filesystem}: needs {human_bytes(fs.need_bytes)} and {inodes}; "
              f"free {human_bytes(fs.free_bytes)} and {fs.free_inodes:,} inodes: {verdict}")
    if unwritable is not None:
        print(f"root {manifest.root}: NOT WRITABLE ({unwritable}); apply would fail: fix its permissions "
              "or mount, or, under systemd, add it to ReadWritePaths=")
    return 0 if ok else 1


def root_unwritable(manifest: Manifest) -> str | None:
    """Why apply could not write under root (None when it can), asked without writing anything:
    access(2) on root, or on the nearest existing directory above it that apply would create it in."""
    path = manifest.root
    while not path.exists() and path != path.parent:
        path = path.parent
    if os.access(path, os.W_OK | os.X_OK):
        return None
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_DIRECTORY))
        statvfs = os.statvfs(path)
    except OSError as e:
        return e.strerror
    return "read-only file system" if statvfs.f_flag & os.ST_RDONLY else f"no write permission on {path}"


def _header_counts(manifest: Manifest, observed: Observed) -> dict[str, TarCount]:
    """An uncompressed archive on disk but not indexed: count its members from tar headers only."""
    out: dict[str, TarCount] = {}
    for comp in manifest.enabled():
        state = observed.components.get(comp.name)
        if comp.unpack == "none" or state is None or state.archive.indexed or not state.archive.present:
            continue
        if comp.size is not None and state.archive.size != comp.size:
            continue  # not the archive the manifest pins (apply refuses it): keep the pinned size's bound
        count = count_members(comp.archive, nested=comp.unpack == "class-tars")
        if count is not None:
            out[comp.name] = count
    return out


def _per_component(manifest: Manifest, observed: Observed, needs: list[Need]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for comp in manifest.enabled():
        mine = [n for n in needs if n.component == comp.name]
        out[comp.name] = {
            "fetch_bytes": fetch_bytes(comp, observed.components.get(comp.name)),
            "need_bytes": sum(n.bytes for n in mine), "need_inodes": sum(n.inodes for n in mine),
            "inodes_known": all(n.inodes_known for n in mine),
        }
    return out


def _describe(action: Action) -> dict[str, Any]:
    kind = type(action)
    return {"kind": action.kind, "component": action.component, "phase": kind.phase, "runs_in": kind.runs_in,
            **{k: str(v) for k, v in vars(action).items() if k not in ("component", "origin")}}


def apply(manifest: Manifest, workers: int | None = None, sources: dict[str, Source] | None = None,
          progress: bool = False) -> int:
    """`progress`: a live display per component on the terminal (service/console.py)."""
    stop = threading.Event()
    with RootLock(manifest.root), _ctrl_c_stops(stop):
        hooks = Hooks(manifest, last_phases(manifest))
        board = StatusBoard(manifest)
        with _live_display(board if progress else None):
            outcome = run_apply(manifest, workers=workers, sources=sources, stop=stop, board=board)
        hooks.run(outcome)
    if outcome.stopped:
        print("datasetd: interrupted; run apply again to resume where it stopped", file=sys.stderr)
        return EXIT_INTERRUPTED
    for name, message in outcome.failed.items():
        print(f"datasetd: {name}: {message}", file=sys.stderr)
    return 0 if outcome.ok else 1


def _live_display(board: StatusBoard | None) -> contextlib.AbstractContextManager[None]:
    if board is None:
        return contextlib.nullcontext()
    # rich only for a terminal (~0.1 s of a cold start that a piped or scripted apply never uses)
    from datasetd.service import console
    return console.live(board)


@contextlib.contextmanager
def _ctrl_c_stops(stop: threading.Event) -> Iterator[None]:
    """The first Ctrl-C stops the run cleanly (steps drain, status says stopped); a second one
    raises KeyboardInterrupt at once. Only the main thread can take signals (tests call from others)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_sigint(signum: int, frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def run_apply(manifest: Manifest, workers: int | None = None,
              sources: dict[str, Source] | None = None, stop: threading.Event | None = None,
              board: StatusBoard | None = None) -> Outcome:
    srcs = sources if sources is not None else make_sources(manifest)
    board = board or StatusBoard(manifest)
    try:
        return rebuilding(lambda: open_journal(manifest), lambda journal: Executor(
            manifest, journal, board, workers=workers, sources=srcs, stop=stop).run())
    except KeyboardInterrupt:
        board.state = "stopped"  # the second Ctrl-C: no drain, but the record says how it ended
        board.write(force=True)
        raise
    finally:
        if sources is None:
            close_sources(srcs)  # saves torrent resume data, stops the libtorrent session cleanly


# ---- status --------------------------------------------------------------------------------


def current_status(manifest: Manifest) -> dict[str, Any]:
    """The daemon's status.json while one runs; otherwise computed from disk and journal, with
    the last run's outcome (its state, each component's error, when it was written) kept."""
    data = status_mod.read(manifest.state_dir / "status.json")
    if not (isinstance(data, dict) and isinstance(data.get("components"), dict)):
        data = None  # hand-edited or cut short: ignored, and rewritten by the next run
    # `datasetd run` stays up once converged (or failed): while it holds the root's lock its file is
    # the truth, and only it knows manifest_error, pass_error and the metrics address. A pid in the
    # file proves nothing (edited, or recycled by another process).
    if data and data.get("state") != "stopped" and held_elsewhere(manifest.root):
        return data
    journal = open_journal(manifest, create=False)
    try:
        observed = observe(manifest, journal)
    finally:
        journal.close()
    board = StatusBoard(manifest)
    for name, comp in manifest.components.items():
        board.components[name].__dict__.update(summarize(comp, observed.components.get(name)))
    snap = board.snapshot()
    snap["pid"] = None
    snap["updated"] = None  # nothing was written: only the last run's file has a time
    converged = all(c["phase"] in ("ready", "disabled") for c in snap["components"].values())
    snap["state"] = "converged" if converged else "idle"
    if data:
        _keep_last_run(snap, data, converged)
    return snap


def _keep_last_run(snap: dict[str, Any], data: dict[str, Any], converged: bool) -> None:
    """What the disk cannot tell: how the last run ended and why a component failed."""
    snap["updated"] = data.get("updated")
    if not converged and data.get("state") in ("failed", "stopped"):
        snap["state"] = data["state"]  # a crashed run (its pid gone, state "running") stays "idle"
    for key in ("pass_error", "manifest_error"):
        if data.get(key) and not converged:
            snap[key] = data[key]
    for name, old in data["components"].items():
        now = snap["components"].get(name)
        if now is None or now["phase"] in ("ready", "disabled"):
            continue
        if not (isinstance(old, dict) and isinstance(old.get("last_error"), str)):
            continue
        now["last_error"] = old["last_error"]
        if old.get("phase") == "error":
            now["phase"] = "error"


def status(manifest: Manifest, as_json: bool = False, watch: bool = False) -> int:
    try:
        return _status(manifest, as_json, watch)
    except BrokenPipeError:
        # `status --json | head -1`: the reader has what it wanted. Point stdout at /dev/null so
        # the interpreter's own flush at exit does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _status(manifest: Manifest, as_json: bool, watch: bool) -> int:
    while True:
        snap = current_status(manifest)
        if as_json:
            print(json.dumps(snap, indent=2, sort_keys=True), flush=True)
        else:
            if watch:
                print("\x1b[2J\x1b[H", end="")
            print(render_status(snap), flush=True)
        if not watch:
            break
        try:
            time.sleep(1.0)
        except KeyboardInterrupt:  # Ctrl-C is how a watch ends: not a failure
            return 0
    converged = all(c["phase"] in ("ready", "disabled") for c in snap["components"].values())
    return 0 if converged else 1


def render_status(snap: dict[str, Any]) -> str:
    lines = [f"datasetd {snap.get('version')}  root {snap.get('root')}  state {snap.get('state')}"
             f"  updated {snap.get('updated')}"]
    for key, label in (("manifest_error", "manifest edit rejected, the last good one runs"),
                       ("pass_error", "last pass aborted")):
        if snap.get(key):
            lines.append(f"  {label}: {snap[key]}")
    for name, c in sorted(snap["components"].items()):
        total = c.get("bytes_total") or 0
        frac = (c.get("bytes_done", 0) / total) if total else (1.0 if c["phase"] == "ready" else 0.0)
        bar = "#" * int(frac * 20) + "." * (20 - int(frac * 20))
        extra = ""
        if c.get("classes_total"):
            extra += f" classes {c['classes_done']}/{c['classes_total']}"
        if c.get("files_total"):
            extra += f" files {c['files_done']}/{c['files_total']}"
        if c.get("rate"):
            extra += f" {human_bytes(int(c['rate']))}/s"
        if c.get("eta_seconds"):
            extra += f" eta {int(c['eta_seconds'])}s"
        lines.append(f"  {name:<14} {c['phase']:<10} [{bar}] {frac * 100:5.1f}%{extra}")
        if c.get("retry"):
            lines.append(f"  {'':<14} {c['retry']}")
        if c.get("last_error"):
            lines.append(f"  {'':<14} error: {c['last_error']}")
    return "\n".join(lines)


# ---- verify --------------------------------------------------------------------------------


def verify(manifest: Manifest, components: list[str] | None = None, repair: bool = False,
           workers: int | None = None, report: Path | None = None) -> int:
    log = logs.get()
    names = components or [c.name for c in manifest.enabled()]
    unknown = [n for n in names if n not in manifest.components]
    if unknown:
        from datasetd.errors import UsageError

        raise UsageError(f"{manifest.path}: no component named {unknown[0]!r}; "
                         f"known: {', '.join(manifest.components)}")
    with RootLock(manifest.root):
        journal = open_journal(manifest, full_check=True)  # verify reads everything anyway
        try:
            bad = _deep_verify(manifest, journal, names, workers or manifest.daemon.workers, repair)
            bad += [f"expect {p}" for p in report_mod.expectation_problems(manifest, names)]
            if report is not None:
                json_path = report_mod.write(report, manifest, report_mod.build(manifest, journal, names), bad)
                print(f"verify: report written to {report} and {json_path}")
            for line in bad:
                print(f"BAD {line}")
            if not bad:
                print("verify: every expected file is present and matches its record")
                return 0
            if not repair:
                print(f"verify: {len(bad)} problem(s); run with --repair to re-extract", file=sys.stderr)
                return 1
        finally:
            journal.close()
        outcome = run_apply(manifest, workers=workers)
    if outcome.ok:
        log.info("verify.repaired", problems=len(bad))
        print(f"verify: repaired {len(bad)} problem(s)")
        return 0
    return 1


def _deep_verify(manifest: Manifest, journal: JournalDB, names: list[str], workers: int,
                 repair: bool) -> list[str]:
    # Without --repair verify only reports: records stay, so a mismatch is still seen on the next run.
    recorded, unaccounted = account_for_manifest(manifest, journal, names)
    tally = verify_units(journal, recorded, Pace(workers), threading.Event(), forget=repair)
    lost = [f"{path}: digest list missing (unit {unit} of {component}); run apply to rewrite it from the journal"
            for component, unit, path in digestlists.lost(manifest, ((u.component, u.name) for u in recorded))]
    return sorted(unaccounted + tally.problems + lost)
