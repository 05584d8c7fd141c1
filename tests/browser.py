"""Headless Chromium for the web status page tests: installed when missing, every request recorded.

`Browser.load(url)` renders the page (its script runs, on virtual time), returns the DOM
text, saves a screenshot, and returns every URL the page asked for (from Chromium's own
NetLog), so a test can prove the page reaches nothing outside its origin. Host names
do not resolve (`--host-resolver-rules`), so neither the page nor Chromium's own
background services can reach beyond loopback.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", "--hide-scrollbars",
         "--window-size=1000,900", "--virtual-time-budget=4000"]


def find_or_install_chromium() -> str:
    """Debian's chromium; apt-get installs it when missing. Skips (with why) only when that fails."""
    found = shutil.which("chromium")
    if found:
        return found
    if shutil.which("apt-get") is None:
        pytest.skip("chromium is not installed and there is no apt-get to install it")
    log = []
    for cmd in (["apt-get", "install", "-y", "-q", "chromium"], ["apt-get", "update", "-q"],
                ["apt-get", "install", "-y", "-q", "chromium"]):
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        log.append(out.stderr.strip().splitlines()[-1:] or [""])
        if out.returncode == 0 and shutil.which("chromium"):
            return str(shutil.which("chromium"))
    pytest.skip(f"chromium could not be installed with apt-get: {log[-1][0]}")


@dataclass
class Page:
    dom: str
    requests: list[str]  # every URL fetched with the page as its top frame (NetLog)


class Browser:
    def __init__(self, executable: str) -> None:
        self.executable = executable

    def load(self, url: str, screenshot: Path) -> Page:
        with tempfile.TemporaryDirectory(prefix="datasetd-chromium-") as tmp:
            netlog = Path(tmp) / "net.json"
            base = [self.executable, *FLAGS, f"--user-data-dir={tmp}/profile"]
            dom = subprocess.run([*base, f"--log-net-log={netlog}", "--dump-dom", url],
                                 capture_output=True, text=True, timeout=120, check=True).stdout
            requests = page_requests(netlog, url)
            shot = Path(tmp) / "shot.png"
            subprocess.run([*base, f"--screenshot={shot}", url], capture_output=True, timeout=120, check=True)
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shot, screenshot)
        return Page(dom, requests)


def page_requests(netlog: Path, url: str) -> list[str]:
    """URLs requested in the page's context: the network isolation key names the page's site
    (Chromium's own background requests carry another key, or none)."""
    data = json.loads(netlog.read_text())
    names = {v: k for k, v in data["constants"]["logEventTypes"].items()}
    site = "/".join(url.split("/")[:3]).rsplit(":", 1)[0]  # http://127.0.0.1
    out = []
    for event in data["events"]:
        params = event.get("params") or {}
        if names.get(event["type"]) == "URL_REQUEST_START_JOB" and "url" in params \
                and str(params.get("network_isolation_key", "")).startswith(site):
            out.append(params["url"])
    return out


@pytest.fixture(scope="session")
def browser() -> Browser:
    return Browser(find_or_install_chromium())
