"""Command line: argument parsing and exit codes only.

Exit codes: 0 converged / clean, 1 failed (a component in error, a verify
mismatch, not enough space), 2 invalid manifest or usage, 3 `wait` timed out.
"""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from datasetd import __version__, logs
from datasetd.config.manifest import Manifest
from datasetd.config.parsing import load
from datasetd.errors import DatasetdError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_TIMEOUT, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


DESCRIPTION = """\
datasetd makes large training data sets (ImageNet ILSVRC2012 first) appear on disk,
complete and verified, from one TOML manifest: it fetches (file, HTTP, BitTorrent),
unpacks, re-reads every file against its digest, and resumes after any crash.
Each verb takes the manifest's path; `datasetd VERB --help` describes its options."""

EPILOG = """\
exit codes: 0 converged / clean, 1 failed (a component in error, a verify mismatch,
not enough space, a blocked plan), 2 invalid manifest or usage (also: another
datasetd holds the root), 3 `wait` timed out, 130 interrupted (Ctrl-C).
manifest schema: manifests/README.md; daemon under systemd: systemd/README.md"""

MANIFEST_HELP = "the dataset's TOML manifest (schema: manifests/README.md)"
MAX_WORKERS = 256  # daemon.workers' range in the manifest


def _workers(text: str) -> int:
    """--workers within the manifest's range for daemon.workers, as a one-line usage error."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= value <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"{value} is out of range: use 1 to {MAX_WORKERS} "
                                         "(leave it out to use daemon.workers)")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is out of range: use 0 or more seconds")
    return value


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line, like every other datasetd error (the usage is one --help away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    p = _Parser(prog="datasetd", description=DESCRIPTION, epilog=EPILOG, formatter_class=fmt)
    p.add_argument("--version", action="version", version=f"datasetd {__version__}")
    p.add_argument("--log-format", choices=("auto", "json", "console"), default="auto",
                   help="log lines on stderr: JSON lines, or console lines; auto = console on a terminal")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"),
                   help="the least severe events shown (default: info)")
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")

    def verb(name: str, summary: str, details: str) -> argparse.ArgumentParser:
        cmd = sub.add_parser(name, help=summary, description=f"{summary}.\n\n{details}", epilog=EPILOG,
                             formatter_class=fmt)
        cmd.add_argument("manifest", help=MANIFEST_HELP)
        return cmd

    plan = verb("plan", "show the next actions, bytes to move and space needed",
                "Reads the disk and the journal, writes nothing. Exits 1 when a component is blocked,\n"
                "the plan does not fit the free space, or root is not writable.")
    plan.add_argument("--json", action="store_true", help="print the plan as one JSON document")
    apply = verb("apply", "reconcile until converged or failed",
                 "Fetches, unpacks and verifies until every enabled component is ready (exit 0) or one\n"
                 "fails (exit 1). On a terminal it shows a live progress display per component, else JSON\n"
                 "log lines. Ctrl-C stops cleanly (exit 130); run it again to resume.")
    apply.add_argument("--workers", type=_workers, metavar="N",
                       help=f"worker processes, 1 to {MAX_WORKERS} (default: daemon.workers)")
    verb("run", "daemon: reconcile, watch the manifest, schedule verification",
         "Keeps the tree converged until SIGTERM: applies edits of the manifest, reconciles every\n"
         "daemon.reconcile_every, deep-verifies every daemon.deep_verify_every, serves the status page\n"
         "(daemon.web) and metrics (daemon.metrics) when set. See systemd/README.md.")
    status = verb("status", "show what each component is doing",
                  "The running daemon's status.json; with none running, the tree as the disk and journal\n"
                  "show it, with the last run's outcome and errors. Exits 0 when every component is ready.")
    status.add_argument("--json", action="store_true", help="print status.json's schema (README) instead of text")
    status.add_argument("--watch", action="store_true", help="refresh every second until Ctrl-C")
    verify = verb("verify", "re-hash every file against its record",
                  "Reads every recorded file back and compares names, sizes and sha256. Exits 1 on any\n"
                  "mismatch unless --repair fixed it.")
    verify.add_argument("--component", action="append", metavar="NAME",
                        help="only this component (repeat for more; default: every enabled one)")
    verify.add_argument("--repair", action="store_true", help="re-extract or re-fetch what is bad")
    verify.add_argument("--workers", type=_workers, metavar="N",
                        help=f"hashing processes, 1 to {MAX_WORKERS} (default: daemon.workers)")
    verify.add_argument("--report", type=Path, metavar="FILE",
                        help="write an acceptance report: Markdown at FILE, JSON beside it")
    wait = verb("wait", "block until components are ready (0), one fails (1), or timeout (3)",
                "Polls status every second; for scripts that start after `datasetd run`.")
    wait.add_argument("--component", action="append", metavar="NAME", help="default: every enabled component")
    wait.add_argument("--timeout", type=_seconds, metavar="SECONDS", help="default: wait forever")
    demo = sub.add_parser("demo", help="build a small ImageNet-shaped set, apply manifests/demo.toml",
                          description="Builds a 20-class train tar, a val tar and a devkit tar, serves them over "
                                      "HTTP and BitTorrent on loopback and applies the demo manifest.")
    demo.add_argument("--manifest", default=None, metavar="FILE", help="default: manifests/demo.toml")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    fmt = {"auto": None, "json": True, "console": False}[args.log_format]
    level = args.log_level
    if _live_progress(args):
        # The display shows what the per-unit info lines would: keep only warnings and errors above it.
        fmt, level = False, "warning" if level == "info" else level
    logs.configure(json=fmt, level=level)
    try:
        return _dispatch(args)
    except DatasetdError as e:
        print(f"datasetd: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("datasetd: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _live_progress(args: argparse.Namespace) -> bool:
    """apply on a terminal, unless JSON logs were asked for."""
    return bool(args.verb == "apply" and args.log_format != "json" and sys.stderr.isatty())


def _dispatch(args: argparse.Namespace) -> int:
    from datasetd import commands

    if args.verb == "demo":
        from datasetd import demo

        return demo.main(args.manifest)
    manifest = load(args.manifest)
    if args.verb == "plan":
        return commands.plan(manifest, as_json=args.json)
    if args.verb == "apply":
        return commands.apply(manifest, workers=args.workers, progress=_live_progress(args))
    if args.verb == "status":
        return commands.status(manifest, as_json=args.json, watch=args.watch)
    if args.verb == "verify":
        return commands.verify(manifest, components=args.component, repair=args.repair, workers=args.workers,
                               report=args.report)
    if args.verb == "wait":
        return _wait(manifest, args.component, args.timeout)
    if args.verb == "run":
        from datasetd.service import daemon as daemon_mod

        code: int = daemon_mod.run(Path(args.manifest), manifest, threading.Event())
        return code
    raise AssertionError(args.verb)  # pragma: no cover


def _wait(manifest: Manifest, components: list[str] | None, timeout: float | None) -> int:
    from datasetd.waiting import ComponentFailed, wait_ready

    try:
        wait_ready(manifest, components, timeout)
    except ComponentFailed as e:
        print(f"datasetd: {e}", file=sys.stderr)
        return EXIT_FAILED
    except TimeoutError as e:
        print(f"datasetd: {e}", file=sys.stderr)
        return EXIT_TIMEOUT
    return EXIT_OK


def entry() -> None:
    sys.exit(main())


__all__ = ["Manifest", "entry", "main"]
