"""HTTP components through the whole pipeline: fetch, index, extract, verify, delete the download."""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
import trustme

from conftest import WNIDS, gnu_tar_extract, sha256, tree_digest, write_manifest
from datasetd import cli
from datasetd.demo import build_val
from http_server import Fault, FaultServer


def http_manifest(tmp_path: Path, url: str, data: bytes, keep: bool = False, extra: str = "") -> Path:
    return write_manifest(tmp_path / "m.toml", tmp_path / "root", f"""
[components.val]
source = "http"
url = "{url}"
file = "downloads/val.tar"
size = {len(data)}
sha256 = "{sha256(data)}"
unpack = "tar"
into = "val"
keep_archive = {str(keep).lower()}
{extra}
""")


def test_download_survives_a_reset_and_the_archive_goes_once_verified(tmp_path: Path) -> None:
    val, _ = build_val(WNIDS)
    with FaultServer(files={"/val.tar": val}) as server:
        server.add_fault("/val.tar", Fault(reset_after=len(val) // 2))
        m = http_manifest(tmp_path, server.url("/val.tar"), val)
        assert cli.main(["apply", str(m)]) == 0
        resumed = [r for r in server.requests("/val.tar", "GET") if r.range_start]
        assert resumed, "the second request should resume with a Range"
    root = tmp_path / "root"
    assert tree_digest(root / "val") == tree_digest(gnu_tar_extract(_write(tmp_path / "v.tar", val), tmp_path / "r"))
    assert not (root / "downloads/val.tar").exists(), "keep_archive = false deletes the verified download"
    # converged: nothing is fetched again although the archive is gone
    assert cli.main(["apply", str(m)]) == 0


def test_corrupt_download_is_refused_with_both_digests(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    val, _ = build_val(WNIDS)
    with FaultServer(files={"/val.tar": val}) as server:
        server.add_fault("/val.tar", Fault(corrupt_at=1000), times=None)
        m = http_manifest(tmp_path, server.url("/val.tar"), val, extra="")
        assert cli.main(["apply", str(m)]) == 1
    err = json.loads((tmp_path / "root/.datasetd/status.json").read_text())["components"]["val"]["last_error"]
    assert sha256(val) in err
    assert not (tmp_path / "root/val").exists() and not (tmp_path / "root/downloads/val.tar").exists()


def test_token_from_the_environment_never_reaches_logs_or_status(tmp_path: Path) -> None:
    val, _ = build_val(WNIDS[:2])
    token = "SECRET-TOKEN-7f3a"
    with FaultServer(files={"/val.tar": val}, bearer=token) as server:
        m = http_manifest(tmp_path, server.url("/val.tar"), val, extra='auth = { bearer_env = "DATASETD_TOKEN" }')
        env = {**os.environ, "DATASETD_TOKEN": token}
        done = subprocess.run([sys.executable, "-m", "datasetd", "--log-format", "json", "apply", str(m)],
                              env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        other = tmp_path / "other"
        other.mkdir()
        m2 = http_manifest(other, server.url("/val.tar"), val, extra='auth = { bearer_env = "DATASETD_TOKEN" }')
        denied = subprocess.run([sys.executable, "-m", "datasetd", "apply", str(m2)], capture_output=True,
                                text=True, timeout=60, env={**env, "DATASETD_TOKEN": token + "-wrong"})
        assert len(server.requests("/val.tar", "GET")) >= 2
    assert denied.returncode == 1 and "DATASETD_TOKEN" in denied.stderr, denied.stderr
    assert token not in done.stdout + done.stderr + denied.stdout + denied.stderr
    for path in [*(tmp_path / "root/.datasetd").rglob("*"), *(other / "root").rglob("*")]:
        if path.is_file():
            assert token.encode() not in path.read_bytes(), path


def test_demo_runs_every_source_kind_and_converges(tmp_path: Path) -> None:
    """`make demo`: a local file, a local HTTP server and a local BitTorrent seeder."""
    repo = Path(__file__).resolve().parents[1]
    (tmp_path / "manifests").mkdir()
    shutil.copy(repo / "manifests/demo.toml", tmp_path / "manifests/demo.toml")
    done = subprocess.run([sys.executable, "-m", "datasetd", "demo", "--manifest",
                           str(tmp_path / "manifests/demo.toml")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "state converged" in done.stdout
    for name in ("train", "val", "devkit"):
        assert f"{name}" in done.stdout
    root = tmp_path / ".demo/root"
    assert len(list((root / "train").iterdir())) == 20
    assert len(list((root / "val").iterdir())) == 100 and len(list((root / "devkit").rglob("*.txt"))) == 3
    assert list((root / ".datasetd/torrent").glob("*.resume")), "val came over BitTorrent"
    assert not (root / "downloads/ILSVRC2012_img_val.tar").exists(), "keep_archive = false"


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_download_in_place_without_a_journal_is_rehashed_not_fetched_again(tmp_path: Path) -> None:
    val, _ = build_val(WNIDS)
    with FaultServer(files={"/val.tar": val}) as server:
        m = http_manifest(tmp_path, server.url("/val.tar"), val, keep=True)
        assert cli.main(["apply", str(m)]) == 0
        gets = len(server.requests("/val.tar", "GET"))
        for p in (tmp_path / "root/.datasetd").glob("journal.sqlite*"):
            p.unlink()
        assert cli.main(["apply", str(m)]) == 0
        assert len(server.requests("/val.tar", "GET")) == gets, "a verified download was fetched again"
        archive = tmp_path / "root/downloads/val.tar"
        archive.write_bytes(b"\0" + val[1:])  # same size, wrong bytes: the pin must catch it
        for p in (tmp_path / "root/.datasetd").glob("journal.sqlite*"):
            p.unlink()
        assert cli.main(["apply", str(m)]) == 0
        assert len(server.requests("/val.tar", "GET")) > gets, "a download that broke its pin was kept"
    assert archive.read_bytes() == val


# Installed for other verbs or as other packages' optional extras; an HTTP apply has no use for them,
# and each costs a cold start ~0.05-0.15 s of disk reads (the HTTP bench row's start before the first byte).
NOT_FOR_AN_HTTP_APPLY = ("rich", "pygments", "click", "libtorrent", "apscheduler", "prometheus_client", "scipy",
                         "watchdog", "asyncio")


def test_an_http_apply_imports_only_what_it_uses(tmp_path: Path) -> None:
    val, _ = build_val(WNIDS[:2])
    listing = tmp_path / "modules.txt"
    # `datasetd apply` in a fresh interpreter that writes, as it exits, every module it imported.
    run_cli = ("import atexit, os, runpy, sys\n"
               "atexit.register(lambda: open(os.environ['MODULES_OUT'], 'w').write('\\n'.join(sys.modules)))\n"
               "sys.argv[0] = 'datasetd'\n"
               "runpy.run_module('datasetd', run_name='__main__')\n")
    with FaultServer(files={"/val.tar": val}) as server:
        m = http_manifest(tmp_path, server.url("/val.tar"), val)
        env = {**os.environ, "MODULES_OUT": str(listing)}
        done = subprocess.run([sys.executable, "-c", run_cli, "--log-format", "json", "apply", str(m)],
                              capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    imported = {name.split(".")[0] for name in listing.read_text().split()}
    assert {"httpx", "datasetd"} <= imported  # the listing is whole
    assert not imported & set(NOT_FOR_AN_HTTP_APPLY)


def test_an_https_download_trusts_the_system_store(tmp_path: Path) -> None:
    ca = trustme.CA()  # stands in for a public CA: trusted through SSL_CERT_FILE, as a system store is
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(tls)
    val, _ = build_val(WNIDS[:2])
    with FaultServer(files={"/val.tar": val}, tls=tls) as server:
        m = http_manifest(tmp_path, server.url("/val.tar"), val)
        assert server.url("/val.tar").startswith("https://")
        trusted = subprocess.run([sys.executable, "-m", "datasetd", "apply", str(m)], capture_output=True,
                                 text=True, timeout=60, env={**os.environ, "SSL_CERT_FILE": str(ca_file)})
    assert trusted.returncode == 0, trusted.stderr[-2000:]
    assert tree_digest(tmp_path / "root/val") == tree_digest(
        gnu_tar_extract(_write(tmp_path / "v.tar", val), tmp_path / "r"))


def test_a_certificate_that_fails_verification_is_one_clear_error_not_a_retry(tmp_path: Path) -> None:
    """A server whose certificate no trusted CA signed: the same failure on every attempt, so the
    apply stops at once with one line naming the certificate, instead of retrying with backoff."""
    ca = trustme.CA()  # not in any store the client trusts
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(tls)
    val, _ = build_val(WNIDS[:2])
    with FaultServer(files={"/val.tar": val}, tls=tls) as server:
        m = http_manifest(tmp_path, server.url("/val.tar"), val)
        done = subprocess.run([sys.executable, "-m", "datasetd", "apply", str(m)], capture_output=True,
                              text=True, timeout=60)
    assert done.returncode != 0
    said = [line for line in done.stderr.splitlines() if "certificate failed verification" in line]
    assert said and "SSL_CERT_FILE" in said[0], done.stderr[-2000:]
    assert "retrying" not in done.stderr, done.stderr[-2000:]
    assert not (tmp_path / "root/val").exists()
