"""`apply` on a real pseudo-terminal shows a live rich display per component; JSON lines otherwise."""

from __future__ import annotations

import os
import re
import subprocess

from conftest import Dataset, datasetd_cmd


def run_on_a_terminal(args: list[str]) -> tuple[int, str]:
    primary, secondary = os.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "160", "LINES": "40"}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen(args, stdin=secondary, stdout=secondary, stderr=secondary, env=env, close_fds=True)
    os.close(secondary)
    chunks = []
    while True:
        try:
            data = os.read(primary, 65536)
        except OSError:  # EIO: every copy of the terminal's other end is closed
            break
        if not data:
            break
        chunks.append(data)
    os.close(primary)
    return proc.wait(timeout=120), b"".join(chunks).decode(errors="replace")


def test_apply_on_a_terminal_shows_one_live_display_per_component(dataset: Dataset) -> None:
    code, screen = run_on_a_terminal([*datasetd_cmd(), "apply", str(dataset.manifest)])
    assert code == 0, screen
    assert "\x1b[" in screen, "no live display (cursor control) on the terminal"
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen)
    final = {line.split()[0]: line for line in plain.splitlines() if line.strip().startswith(("train ", "val "))}
    assert set(final) == {"train", "val"}, plain[-2000:]
    train = [ln for ln in plain.splitlines() if ln.strip().startswith("train ")][-1]
    assert "ready" in train and "100%" in train and "8/8 classes" in train and "48/48 files" in train, train
    assert "KiB" in train
    assert '"event"' not in plain and "class.extracted" not in plain, "per-class log lines under the display"


def test_apply_not_on_a_terminal_logs_json_lines(dataset: Dataset) -> None:
    out = subprocess.run([*datasetd_cmd(), "apply", str(dataset.manifest)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert lines and all(ln.startswith("{") for ln in lines), lines[:3]
    assert any('"event": "apply.converged"' in ln for ln in lines)
    assert "\x1b[" not in out.stderr
