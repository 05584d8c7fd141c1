"""Retries a user can see: status, the page and the console say when and why, in words, and
events name the component (not a temporary file)."""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path

from conftest import sha256, write_manifest
from datasetd import commands, logs
from datasetd.config.parsing import load
from datasetd.sources.http import HttpFetcher
from http_server import Fault, FaultServer


def test_a_retry_says_when_which_attempt_and_why(tmp_path: Path) -> None:
    data = os.urandom(200_000)
    server = FaultServer(files={"/blob.bin": data}).start()
    server.add_fault("/blob.bin", Fault(status=503))  # the next GET only: the retry succeeds
    root = tmp_path / "root"
    manifest = load(write_manifest(tmp_path / "m.toml", root, f"""
[components.blob]
source = "http"
url = "{server.url('/blob.bin')}"
file = "downloads/blob.bin"
sha256 = "{sha256(data)}"
"""))
    out = io.StringIO()
    logs.configure(json=True, stream=out)
    try:
        # one HTTP attempt per step, so the executor's retry is the one that shows
        outcome = commands.run_apply(manifest, sources={"http": HttpFetcher(max_attempts=1, retry_max=0.5)})
    finally:
        server.stop()
        logs.configure(json=True)
    assert outcome.ok, outcome.failed
    events = [json.loads(line) for line in out.getvalue().splitlines() if line.startswith("{")]
    retrying = [e for e in events if e["event"] == "step.retrying"]
    assert retrying, [e["event"] for e in events]
    said = retrying[0]["message"]
    assert re.fullmatch(r"retrying in 0\.5 s \(attempt 2 of \d\): .*503.*", said), said
    assert retrying[0]["component"] == "blob"
    assert all(e.get("component") in (None, "blob") for e in events), "an event names something else"
    final = json.loads((root / ".datasetd/status.json").read_text())["components"]["blob"]
    assert final["phase"] == "ready" and final["retry"] is None, final


def test_status_text_shows_a_pending_retry() -> None:
    snap = {"version": "0", "root": "/r", "state": "running", "updated": None, "components": {"train": {
        "phase": "fetching", "bytes_done": 0, "bytes_total": 0, "last_error": None,
        "retry": "retrying in 60 s (attempt 2 of 3): Name or service not known"}}}
    text = commands.render_status(snap)
    assert "retrying in 60 s (attempt 2 of 3): Name or service not known" in text
