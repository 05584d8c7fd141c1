"""Status that tells the truth: snapshots never go back, the last run's outcome survives it,
readers never write, another user in the root's group can read it, Ctrl-C is a clean stop."""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import Dataset, datasetd_cmd, run_datasetd, sha256, write_manifest
from datasetd.config.parsing import load
from datasetd.state.status import StatusBoard
from http_server import FaultServer


def test_status_snapshots_never_go_back_in_time(dataset: Dataset) -> None:
    """Many threads report at once (fetch threads and the coordinator do); every file a reader
    sees must be at least as new as the one before, and the last one holds every final figure."""
    board = StatusBoard(load(dataset.manifest), min_interval=0.0)
    names = [f"c{i}" for i in range(6)]  # one reporter each, so each one's figures only grow
    rounds = 400
    seen_regressions: list[str] = []
    stop = threading.Event()

    def reporter(name: str) -> None:
        for i in range(1, rounds + 1):
            board.update(name, bytes_done=i, bytes_total=rounds)

    def reader() -> None:
        last = dict.fromkeys(names, 0)
        while not stop.is_set():
            try:
                snap = json.loads(board.path.read_text())
            except (OSError, ValueError):
                continue
            for n in names:
                done = snap["components"].get(n, {}).get("bytes_done", 0)
                if done < last[n]:
                    seen_regressions.append(f"{n}: {last[n]} -> {done}")
                last[n] = done

    watcher = threading.Thread(target=reader)
    watcher.start()
    threads = [threading.Thread(target=reporter, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    watcher.join()
    final = json.loads(board.path.read_text())
    assert {n: final["components"][n]["bytes_done"] for n in names} == dict.fromkeys(names, rounds)
    assert not seen_regressions, seen_regressions[:5]


def test_phases_only_move_forward_within_a_run(dataset: Dataset) -> None:
    board = StatusBoard(load(dataset.manifest))
    for phase in ("fetching", "unpacking", "verifying", "unpacking", "pending"):
        board.update("train", phase=phase)
    assert board.components["train"].phase == "verifying"
    board.update("train", phase="error", last_error="boom")
    assert board.components["train"].phase == "error"
    board.update("val", phase="verifying")
    board.new_run()  # the daemon's next pass
    board.update("val", phase="unpacking")
    assert board.components["val"].phase == "unpacking"


def test_status_after_a_failed_apply_shows_its_error_with_no_daemon(dataset: Dataset) -> None:
    text = dataset.manifest.read_text().replace(sha256(dataset.val_bytes), "0" * 64)
    dataset.manifest.write_text(text)
    assert run_datasetd("--log-format", "json", "apply", str(dataset.manifest)).returncode == 1
    written = dataset.status()
    assert written["state"] == "failed"
    # In another process, as a user would: the pid in status.json (this test's) is gone for it.
    out = run_datasetd("status", "--json", str(dataset.manifest))
    assert out.returncode == 1, out.stderr
    snap = json.loads(out.stdout)
    assert snap["state"] == "failed" and snap["pid"] is None
    assert snap["components"]["val"]["phase"] == "error"
    assert "sha256" in snap["components"]["val"]["last_error"]
    assert snap["components"]["train"]["phase"] == "ready"
    assert snap["updated"] == written["updated"], "updated is when status was written, not when we asked"
    text = run_datasetd("status", str(dataset.manifest)).stdout
    assert "state failed" in text and "error: " in text and "sha256" in text


def test_status_and_plan_change_no_state_file(dataset: Dataset) -> None:
    """Readers open the journal with mode=ro and never write status.json (as another user they
    cannot: see test_status_as_another_user_in_the_roots_group). SQLite may add its -wal/-shm."""
    assert dataset.run("apply") == 0
    state = dataset.root / ".datasetd"
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in state.iterdir() if p.is_file()}
    time.sleep(0.01)
    assert dataset.run("status", "--json") == 0
    assert dataset.run("status") == 0
    assert dataset.run("plan") == 0
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in state.iterdir() if p.is_file()}
    assert {k: v for k, v in after.items() if k in before} == before
    assert set(after) - set(before) <= {"journal.sqlite-wal", "journal.sqlite-shm"}


def test_state_is_readable_by_the_roots_group(dataset: Dataset) -> None:
    old = os.umask(0o022)
    try:
        assert dataset.run("apply") == 0
    finally:
        os.umask(old)
    state = dataset.root / ".datasetd"
    assert stat.S_IMODE(state.stat().st_mode) == 0o750
    for name in ("status.json", "journal.sqlite"):
        st = (state / name).stat()
        assert stat.S_IMODE(st.st_mode) == 0o640, name
        assert st.st_gid == dataset.root.stat().st_gid, name


@pytest.fixture
def reader_user() -> tuple[str, str]:
    """A real unprivileged user and a group it belongs to (removed afterwards)."""
    if os.geteuid() != 0 or not shutil.which("useradd"):
        pytest.skip("needs root and useradd to create an unprivileged reader")
    user, group = f"dsr{os.getpid() % 100000}", f"dsg{os.getpid() % 100000}"
    subprocess.run(["groupadd", group], check=True)
    subprocess.run(["useradd", "--no-create-home", "-G", group, user], check=True)
    yield user, group
    subprocess.run(["userdel", user], check=False)
    subprocess.run(["groupdel", group], check=False)


def test_status_as_another_user_in_the_roots_group(reader_user: tuple[str, str]) -> None:
    """The systemd README's setup: datasetd runs as one user, operators in the root's group read."""
    from datasetd.demo import build_val

    user, group = reader_user
    base = Path(os.environ.get("TMPDIR", "/tmp")) / f"datasetd-reader-{os.getpid()}"
    base.mkdir(mode=0o755)
    try:
        base.chmod(0o755)
        root = base / "root"
        (root / "sources").mkdir(parents=True)
        os.chown(root, -1, grp.getgrnam(group).gr_gid)
        root.chmod(0o750)
        val, _ = build_val(["n01440764", "n01443537"])
        (root / "sources" / "val.tar").write_bytes(val)
        manifest = write_manifest(base / "m.toml", root, f"""
[components.val]
source = "file"
path = "sources/val.tar"
sha256 = "{sha256(val)}"
unpack = "tar"
into = "val"
""")
        manifest.chmod(0o644)
        assert run_datasetd("--log-format", "json", "apply", str(manifest)).returncode == 0
        pw = pwd.getpwnam(user)
        # The interpreter lives under /root (0700): load what status needs, then become the reader.
        become = (f"import os, sys; from datasetd import cli, commands; os.setgroups([{grp.getgrnam(group).gr_gid}]); "
                  f"os.setgid({pw.pw_gid}); os.setuid({pw.pw_uid}); "
                  f"sys.exit(cli.main(['status', '--json', {str(manifest)!r}]))")
        out = subprocess.run([sys.executable, "-c", become], capture_output=True, text=True, timeout=60,
                             env={**os.environ, "HOME": "/"})
        assert out.returncode == 0, out.stderr
        assert "Traceback" not in out.stderr
        assert json.loads(out.stdout)["components"]["val"]["phase"] == "ready"
    finally:
        shutil.rmtree(base)


def test_status_json_into_a_closed_pipe_is_not_a_traceback(dataset: Dataset) -> None:
    assert dataset.run("apply") == 0
    cmd = " ".join([*datasetd_cmd(), "status", "--json", str(dataset.manifest)])
    out = subprocess.run(["bash", "-c", f"set -o pipefail; {cmd} | head -c 1 >/dev/null"],
                         capture_output=True, text=True, timeout=60)
    assert "Traceback" not in out.stderr and "BrokenPipe" not in out.stderr, out.stderr
    assert out.returncode == 0


def test_ctrl_c_stops_apply_with_130_and_records_stopped(tmp_path: Path) -> None:
    data = os.urandom(4 << 20)
    server = FaultServer(files={"/val.bin": data}).start()
    server.throttle("/val.bin", 256 * 1024)  # 16 s to fetch: Ctrl-C lands mid-download
    try:
        root = tmp_path / "root"
        manifest = write_manifest(tmp_path / "m.toml", root, f"""
[components.blob]
source = "http"
url = "{server.url('/val.bin')}"
file = "downloads/val.bin"
sha256 = "{sha256(data)}"
""")
        proc = subprocess.Popen([*datasetd_cmd(), "--log-format", "json", "apply", str(manifest)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        status_path = root / ".datasetd" / "status.json"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if status_path.exists() and json.loads(status_path.read_text() or "{}").get(
                    "components", {}).get("blob", {}).get("phase") == "fetching":
                break
            time.sleep(0.1)
        else:
            pytest.fail("apply never started fetching")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err[-2000:]
        assert "Traceback" not in err
        assert json.loads(status_path.read_text())["state"] == "stopped"
    finally:
        server.stop()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__]))
