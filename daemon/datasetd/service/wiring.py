"""What the daemon sets up once per process and shows the outside: transports, metrics, the STATUS= line."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from datasetd import logs
from datasetd.errors import ManifestError, UsageError
from datasetd.service.metrics import MetricsServer, exposition, parse_address
from datasetd.service.web import WebServer
from datasetd.state.status import StatusBoard

STATUS_MAX = 240
S = TypeVar("S")


def status_line(snap: Mapping[str, Any]) -> str:
    """One line for `systemctl status`, e.g. "running: train unpacking 412/1000 classes; val ready"."""
    parts = [_component_line(name, c) for name, c in sorted(snap.get("components", {}).items())]
    line = f"{snap.get('state')}: " + "; ".join(parts)
    if snap.get("manifest_error"):
        line += "; manifest edit rejected (see status.json)"
    if snap.get("pass_error"):
        line += f"; {snap['pass_error']}"
    return line if len(line) <= STATUS_MAX else line[: STATUS_MAX - 3] + "..."


def _component_line(name: str, c: Mapping[str, Any]) -> str:
    phase = c.get("phase")
    if phase in ("fetching", "unpacking", "verifying"):
        if c.get("classes_total"):
            return f"{name} {phase} {c['classes_done']}/{c['classes_total']} classes"
        if c.get("files_total"):
            return f"{name} {phase} {c['files_done']}/{c['files_total']} files"
        if c.get("bytes_total"):
            return f"{name} {phase} {100 * c.get('bytes_done', 0) // c['bytes_total']}%"
    return f"{name} {phase}"


def _listen(path: Path, key: str, address: str, example: str, start: Callable[[str, int], S]) -> S:
    """Start a server at `[daemon] key = address`; a bad address or a busy port is a one-line error."""
    try:
        host, port = parse_address(address)
    except ValueError:
        raise ManifestError(str(path), f"daemon.{key}", f"{address!r} is not HOST:PORT",
                            f'e.g. {key} = "{example}"') from None
    try:
        return start(host, port)
    except OSError as exc:
        raise UsageError(f"{path}: daemon.{key}: cannot listen on {address} ({exc.strerror}); "
                         "choose a free port") from None


def serve_metrics(path: Path, address: str, board: StatusBoard) -> MetricsServer:
    """Start the endpoint and publish where it listens (port 0 picks one) in status.json as "metrics"."""
    server = _listen(path, "metrics", address, "127.0.0.1:9877",
                     lambda host, port: MetricsServer(host, port, board.snapshot))
    board.extra["metrics"] = server.address
    logs.get().info("metrics.started", address=server.address)
    return server


def serve_web(path: Path, address: str, board: StatusBoard, with_metrics: bool) -> WebServer:
    """Start the status page and publish where it listens in status.json as "web"."""
    metrics = exposition(board.snapshot) if with_metrics else None
    server = _listen(path, "web", address, "127.0.0.1:9878",
                     lambda host, port: WebServer(host, port, board.snapshot, metrics))
    board.extra["web"] = server.address
    logs.get().info("web.started", address=server.address, url=f"http://{server.address}/")
    return server
