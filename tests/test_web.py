"""The web status page, end to end: `datasetd run` with `[daemon] web`, read by headless Chromium."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from browser import Browser, browser
from conftest import WNIDS, datasetd_cmd, sha256, write_manifest
from datasetd.demo import build_train, build_val
from http_server import FaultServer

__all__ = ["browser"]  # the fixture, imported to be used here
DOCS_SHOT = Path(__file__).resolve().parent.parent / "docs" / "status-page.png"


def read_status(root: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads((root / ".datasetd" / "status.json").read_text())
    except (OSError, ValueError):
        return {}
    return data


def wait_for(root: Path, what: str, check: Any, timeout: float = 90.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        snap = read_status(root)
        if snap and check(snap):
            return snap
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}; last status: {read_status(root)}")


def text_of(dom: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))


def component_text(dom: str, name: str) -> str:
    m = re.search(rf'<section class="component[^"]*" id="c-{name}">(.*?)</section>', dom, re.S)
    assert m, f"no section for {name} in the rendered page"
    return text_of(m.group(1))


def test_status_page_in_headless_chromium(tmp_path: Path, browser: Browser) -> None:
    root = tmp_path / "root"
    (root / "sources").mkdir(parents=True)
    train = build_train(WNIDS[:4], files=4, size=(500, 2000))
    val, _ = build_val(WNIDS[:4])
    (root / "sources" / "train.tar").write_bytes(train)
    (root / "sources" / "val.tar").write_bytes(val)
    blob = os.urandom(4 << 20)
    server = FaultServer(files={"/devkit.tar": blob}).start()
    # Held at ~2 minutes for the whole file while Chromium looks (a fixed 10 s download was over
    # before a slow Chromium looked, twice in CI); lifted once the page was read mid-way.
    server.throttle("/devkit.tar", 32_000)
    manifest = write_manifest(tmp_path / "m.toml", root, f"""
web = "127.0.0.1:0"

[components.train]
source = "file"
path = "sources/train.tar"
sha256 = "{sha256(train)}"
unpack = "class-tars"
into = "train"

[components.devkit]
source = "http"
url = "{server.url('/devkit.tar')}"
file = "downloads/devkit.bin"
sha256 = "{sha256(blob)}"

[components.val]
source = "file"
path = "sources/val.tar"
sha256 = "{'0' * 64}"
unpack = "tar"
into = "val"
""")
    log = (tmp_path / "daemon.log").open("w")
    daemon = subprocess.Popen([*datasetd_cmd(), "--log-format", "json", "run", str(manifest)],
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        snap = wait_for(root, "train ready, val in error, devkit mid-way", lambda s: (
            s["components"]["train"]["phase"] == "ready" and s["components"]["val"]["phase"] == "error"
            and s["components"]["devkit"]["phase"] == "fetching"
            and 0 < s["components"]["devkit"]["bytes_done"] < len(blob)))
        url = f"http://{snap['web']}/"
        # status.json and the page are two looks at the board: a look between them may catch the
        # download in another phase for a moment (a retry on a loaded machine), so look again.
        deadline = time.monotonic() + 10
        while True:
            mid = browser.load(url, tmp_path / "mid.png")
            devkit = component_text(mid.dom, "devkit")
            fetching = re.search(r"fetching ([\d.]+)%", devkit)
            if fetching is not None or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert fetching is not None, f"the page never showed devkit fetching: {devkit}"
        assert "ready" in component_text(mid.dom, "train") and "100.0%" in component_text(mid.dom, "train")
        pct = float(fetching.group(1))
        assert 0 < pct < 100, devkit
        assert "MiB" in devkit and "/s" in devkit
        val_text = component_text(mid.dom, "val")
        assert "error" in val_text and "sha256" in val_text and "components.val" in val_text
        assert "0.0%" in val_text

        server.throttle("/devkit.tar", None)
        wait_for(root, "devkit ready", lambda s: s["components"]["devkit"]["phase"] == "ready")
        done = browser.load(url, tmp_path / "ready.png")
        devkit = component_text(done.dom, "devkit")
        assert "ready" in devkit and "100.0%" in devkit
        if os.environ.get("DATASETD_UPDATE_SCREENSHOT"):
            DOCS_SHOT.write_bytes((tmp_path / "mid.png").read_bytes())

        origin = url.rstrip("/")
        for page in (mid, done):
            assert page.requests, "the NetLog recorded no request at all"
            outside = [u for u in page.requests if not u.startswith(origin + "/")]
            assert not outside, f"the page asked for something outside its origin: {outside}"
            assert f"{origin}/fragment" in page.requests, "the page did not refresh itself"
        assert (tmp_path / "mid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

        with urllib.request.urlopen(f"{origin}/status.json", timeout=10) as r:
            assert r.headers["Content-Security-Policy"].startswith("default-src 'none'")
            assert json.loads(r.read())["components"]["devkit"]["phase"] == "ready"
        request = urllib.request.Request(f"{origin}/", method="POST", data=b"x")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 405
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=60)
        server.stop()
        log.close()
