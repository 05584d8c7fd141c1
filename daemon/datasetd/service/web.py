"""The read-only web status page of `datasetd run` (`[daemon] web = "HOST:PORT"`).

Sits beside the metrics endpoint: the daemon starts it once, and every request
reads the StatusBoard's snapshot and the last events (logs.recent_events), so it
never waits on, nor triggers, reconciliation. Paths (GET and HEAD only):

    /              the page, rendered here; its script swaps in /fragment every 2 s
    /fragment      the components section alone
    /status.json   the snapshot, as status.json has it
    /metrics       Prometheus text, only when metrics are on too
    /assets/NAME   the page's CSS and script, shipped as package data (web_assets/)

Every answer carries a Content-Security-Policy allowing only this origin: the
page can load nothing from anywhere else.
"""

from __future__ import annotations

import html
import json
import re
import threading
from collections.abc import Callable, Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any

from datasetd import logs
from datasetd.core.summary import figure_parts

Snapshot = Callable[[], Mapping[str, Any]]
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
ASSETS = {"page.css": "text/css; charset=utf-8", "page.js": "text/javascript; charset=utf-8"}
EVENTS_SHOWN = 5
_KEY_RE = re.compile(r"\bcomponents\.[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_.-]+)?")


class WebServer:
    """ThreadingHTTPServer on a daemon thread; `address` is where it really listens (port 0 resolved)."""

    def __init__(self, host: str, port: int, snapshot: Snapshot,
                 metrics: Callable[[], bytes] | None = None) -> None:
        handler = type("Handler", (_Handler,), {"snapshot": staticmethod(snapshot),
                                                "metrics": staticmethod(metrics) if metrics else None})
        self.server = ThreadingHTTPServer((host, port), handler)
        self.server.daemon_threads = True  # a slow browser never holds the daemon's exit
        bound_host, bound_port = self.server.server_address[:2]
        text = str(bound_host)
        self.address = f"[{text}]:{bound_port}" if ":" in text else f"{text}:{bound_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="web", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _Handler(BaseHTTPRequestHandler):
    snapshot: Snapshot
    metrics: Callable[[], bytes] | None
    server_version = "datasetd"

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/":
            self._send(HTTPStatus.OK, "text/html; charset=utf-8", render_page(self.snapshot()).encode())
        elif path == "/fragment":
            self._send(HTTPStatus.OK, "text/html; charset=utf-8", render_components(self.snapshot()).encode())
        elif path == "/status.json":
            body = json.dumps(self.snapshot(), indent=2, sort_keys=True).encode() + b"\n"
            self._send(HTTPStatus.OK, "application/json", body)
        elif path == "/metrics" and self.metrics is not None:
            self._send(HTTPStatus.OK, "text/plain; version=0.0.4; charset=utf-8", self.metrics())
        elif path.startswith("/assets/") and path.removeprefix("/assets/") in ASSETS:
            name = path.removeprefix("/assets/")
            body = resources.files("datasetd.service").joinpath("web_assets", name).read_bytes()
            self._send(HTTPStatus.OK, ASSETS[name], body)
        else:
            self._send(HTTPStatus.NOT_FOUND, "text/plain; charset=utf-8", b"not found\n")

    def do_HEAD(self) -> None:
        self.do_GET()

    def _refuse(self) -> None:
        # Read-only: nothing can be triggered from the page, whatever a client sends.
        self._send(HTTPStatus.METHOD_NOT_ALLOWED, "text/plain; charset=utf-8", b"read-only\n",
                   {"Allow": "GET, HEAD"})

    do_POST = do_PUT = do_DELETE = do_PATCH = _refuse

    def _send(self, status: HTTPStatus, ctype: str, body: bytes, extra: Mapping[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in {"Content-Type": ctype, "Content-Length": str(len(body)), "Cache-Control": "no-store",
                            "Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                            "Referrer-Policy": "no-referrer", **(extra or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a page refreshing every 2 s would flood the journal


# ---- rendering -------------------------------------------------------------------------------


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _duration(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}h {s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m {s % 60:02d}s"


def percent(c: Mapping[str, Any]) -> float:
    total = c.get("bytes_total") or 0
    if total:
        return 100.0 * min(1.0, (c.get("bytes_done") or 0) / total)
    return 100.0 if c.get("phase") == "ready" else 0.0


def render_page(snap: Mapping[str, Any]) -> str:
    title = f"datasetd: {snap.get('state')}"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>{_e(title)}</title><link rel="stylesheet" href="/assets/page.css"></head>
<body><header><h1>datasetd</h1><p>root <code>{_e(snap.get('root'))}</code>,
manifest <code>{_e((snap.get('manifest') or {}).get('path'))}</code>
· <a href="/status.json">status.json</a>{' · <a href="/metrics">metrics</a>' if snap.get('metrics') else ''}</p>
</header>
<main id="live">{render_components(snap)}</main>
<script src="/assets/page.js"></script></body></html>
"""


def render_components(snap: Mapping[str, Any]) -> str:
    state = str(snap.get("state"))
    parts = [f'<p class="state state-{_e(state)}">state <b>{_e(state)}</b> · updated '
             f'<time>{_e(snap.get("updated"))}</time></p>']
    for key, label in (("manifest_error", "Manifest edit rejected, the last good one runs"),
                       ("pass_error", "Last pass aborted")):
        if snap.get(key):
            parts.append(f'<p class="error">{label}: {_e(snap[key])}</p>')
    events = logs.recent_events()
    for name, c in sorted((snap.get("components") or {}).items()):
        parts.append(_component(name, c, [e for e in events if e.get("component") == name][-EVENTS_SHOWN:]))
    return "\n".join(parts)


def _component(name: str, c: Mapping[str, Any], events: list[dict[str, Any]]) -> str:
    phase = str(c.get("phase"))
    pct = percent(c)
    figures = figure_parts(c, " of ", lambda s: f"ETA {_duration(s)}")
    out = [f'<section class="component phase-{_e(phase)}" id="c-{_e(name)}">',
           f'<h2>{_e(name)} <span class="phase">{_e(phase)}</span> <span class="pct">{pct:.1f}%</span></h2>',
           f'<progress max="100" value="{pct:.1f}">{pct:.1f}%</progress>',
           f'<p class="figures">{_e(" · ".join(figures)) or "&nbsp;"}</p>']
    detail = c.get("detail") or {}
    if detail.get("health") or detail.get("hint"):
        out.append(f'<p class="health">torrent health <b>{_e(detail.get("health", ""))}</b>'
                   f'{": " + _e(detail["hint"]) if detail.get("hint") else ""}</p>')
    if c.get("retry"):
        out.append(f'<p class="retry">{_e(c["retry"])}</p>')
    if c.get("last_error"):
        error = str(c["last_error"])
        found = _KEY_RE.search(error)
        key = found.group(0) if found else f"components.{name}"
        out.append(f'<p class="error">error (<code>{_e(key)}</code>): {_e(error)}</p>')
    if events:
        out.append('<ul class="events">' + "".join(
            f"<li><time>{_e(str(e.get('timestamp', ''))[11:19])}</time> {_e(e.get('event'))}"
            f"{' ' + _e(e['unit']) if e.get('unit') else ''}</li>" for e in events) + "</ul>")
    out.append("</section>")
    return "\n".join(out)
