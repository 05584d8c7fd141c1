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

from datasetd import __version__, logs
from datasetd.config.manifest import Manifest, load
from datasetd.errors import DatasetdError, UsageError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_TIMEOUT, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="datasetd", description=__doc__.splitlines()[0] if __doc__ else "")
    p.add_argument("--version", action="version", version=f"datasetd {__version__}")
    p.add_argument("--log-format", choices=("auto", "json", "console"), default="auto")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    plan = sub.add_parser("plan", help="show the next actions, bytes to move and space needed")
    plan.add_argument("manifest")
    plan.add_argument("--json", action="store_true")
    apply = sub.add_parser("apply", help="reconcile until converged or failed")
    apply.add_argument("manifest")
    apply.add_argument("--workers", type=int)
    run = sub.add_parser("run", help="daemon: reconcile, watch the manifest, schedule verification")
    run.add_argument("manifest")
    status = sub.add_parser("status", help="show what each component is doing")
    status.add_argument("manifest")
    status.add_argument("--json", action="store_true")
    status.add_argument("--watch", action="store_true", help="refresh until interrupted")
    verify = sub.add_parser("verify", help="re-hash every file against its record")
    verify.add_argument("manifest")
    verify.add_argument("--component", action="append")
    verify.add_argument("--repair", action="store_true", help="re-extract or re-fetch what is bad")
    verify.add_argument("--workers", type=int)
    verify.add_argument("--report", type=Path, metavar="FILE",
                        help="write an acceptance report: Markdown at FILE, JSON beside it")
    wait = sub.add_parser("wait", help="block until components are ready (0), one fails (1), or timeout (3)")
    wait.add_argument("manifest")
    wait.add_argument("--component", action="append", help="default: every enabled component")
    wait.add_argument("--timeout", type=float, help="seconds (default: wait forever)")
    demo = sub.add_parser("demo", help="build a small ImageNet-shaped set, apply manifests/demo.toml")
    demo.add_argument("--manifest", default=None)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    fmt = {"auto": None, "json": True, "console": False}[args.log_format]
    logs.configure(json=fmt, level=args.log_level)
    try:
        return _dispatch(args)
    except DatasetdError as e:
        print(f"datasetd: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("datasetd: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _dispatch(args: argparse.Namespace) -> int:
    from datasetd import commands

    if args.verb == "demo":
        from datasetd import demo

        return demo.main(args.manifest)
    if getattr(args, "workers", None) is not None and args.workers < 1:
        raise UsageError(f"--workers {args.workers}: must be 1 or more (leave it out to use daemon.workers)")
    manifest = load(args.manifest)
    if args.verb == "plan":
        return commands.plan(manifest, as_json=args.json)
    if args.verb == "apply":
        return commands.apply(manifest, workers=args.workers)
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
