"""Completion hooks with real scripts: the right environment, no shell, and a hook that fails or
hangs never hurts the component."""

from __future__ import annotations

import json
import shutil
import stat
import time
from pathlib import Path

from conftest import Dataset, run_datasetd, sha256


def script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def with_hooks(dataset: Dataset, daemon_keys: str) -> None:
    text = dataset.manifest.read_text().replace("[daemon]\n", f"[daemon]\n{daemon_keys}\n", 1)
    dataset.manifest.write_text(text)


def events(stderr: str, name: str) -> list[dict[str, object]]:
    out = []
    for line in stderr.splitlines():
        if line.startswith("{") and f'"{name}"' in line:
            event = json.loads(line)
            if event.get("event") == name:
                out.append(event)
    return out


def test_on_ready_and_on_error_run_with_the_components_environment(dataset: Dataset, tmp_path: Path) -> None:
    record = tmp_path / "calls.txt"
    hook = script(tmp_path / "hook.sh",
                  f'echo "$1 $DATASETD_COMPONENT $DATASETD_PHASE $DATASETD_ROOT" >> {record}\n')
    text = dataset.manifest.read_text().replace(sha256(dataset.val_bytes), "0" * 64)
    dataset.manifest.write_text(text)
    with_hooks(dataset, f'on_ready = ["{hook}", "ready;$(touch {tmp_path}/no-shell)"]\n'
                        f'on_error = ["{hook}", "failed"]')
    out = run_datasetd("--log-format", "json", "apply", str(dataset.manifest))
    assert out.returncode == 1, out.stderr
    calls = sorted(record.read_text().splitlines())
    assert calls == sorted([f"failed val error {dataset.root}",
                            f"ready;$(touch {tmp_path}/no-shell) train ready {dataset.root}"])
    assert not (tmp_path / "no-shell").exists(), "the argument went through a shell"
    assert len(events(out.stderr, "hook.finished")) == 2

    out = run_datasetd("--log-format", "json", "apply", str(dataset.manifest))
    assert len(record.read_text().splitlines()) == 2, "announced again although nothing changed"


def test_a_failing_or_hanging_hook_does_not_hurt_the_component(dataset: Dataset, tmp_path: Path) -> None:
    hang = script(tmp_path / "hang.sh", f"sleep 30 & echo $! > {tmp_path}/child.pid\nsleep 30\n")
    with_hooks(dataset, f'on_ready = ["{hang}"]\nhook_timeout = "1s"')
    started = time.monotonic()
    out = run_datasetd("--log-format", "json", "apply", str(dataset.manifest))
    assert out.returncode == 0, out.stderr
    assert time.monotonic() - started < 25, "the hung hook held apply"
    failed = events(out.stderr, "hook.failed")
    assert failed and "killed" in str(failed[0]["error"])
    child = int((tmp_path / "child.pid").read_text())
    time.sleep(0.2)
    assert not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2], \
        "the hook's own child outlived the timeout"
    assert json.loads((dataset.root / ".datasetd/status.json").read_text())["state"] == "converged"

    for name in ("train", "val", ".datasetd"):  # start over, with a hook that fails
        shutil.rmtree(dataset.root / name)
    failing = script(tmp_path / "fail.sh", "echo 'cannot reach the chat server' >&2\nexit 3\n")
    dataset.manifest.write_text(dataset.manifest.read_text().replace(str(hang), str(failing)))
    out = run_datasetd("--log-format", "json", "apply", str(dataset.manifest))
    assert out.returncode == 0, out.stderr
    failed = events(out.stderr, "hook.failed")
    assert failed and failed[0]["exit_code"] == 3 and "chat server" in str(failed[0]["stderr"])


def test_a_hook_must_be_an_absolute_path(dataset: Dataset) -> None:
    with_hooks(dataset, 'on_ready = ["notify-send", "done"]')
    out = run_datasetd("apply", str(dataset.manifest))
    assert out.returncode == 2
    assert "daemon.on_ready" in out.stderr and "absolute" in out.stderr and len(out.stderr.splitlines()) == 1
