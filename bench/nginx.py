"""A private nginx on 127.0.0.1 serving one directory: its own prefix, config, temp dirs and port.

Debian's nginx-light is installed with apt-get when no nginx is on PATH (the
bench runs as root on a fresh machine); the system service is never used.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

CONF = """
daemon off;
master_process on;
worker_processes 2;
user root;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 30;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location / {{ }}
    }}
}}
"""


class NginxUnavailable(RuntimeError):
    pass


def find_or_install() -> str:
    found = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)
    if found:
        return found
    if os.geteuid() != 0:
        raise NginxUnavailable("nginx is not installed and the bench is not root: apt-get install nginx-light")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # policy-rc.d 101: dpkg must not start the system nginx service on port 80.
    policy = Path("/usr/sbin/policy-rc.d")
    created = not policy.exists()
    if created:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        for cmd in (["apt-get", "install", "-y", "-q", "nginx-light"],
                    ["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "nginx-light"]):
            done = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if done.returncode == 0 and cmd[1] == "install":
                break
    finally:
        if created:
            policy.unlink()
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
    if not found:
        raise NginxUnavailable(f"apt-get install nginx-light failed: {done.stderr.strip().splitlines()[-1:]}")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Nginx:
    def __init__(self, prefix: Path, root: Path) -> None:
        self.binary = find_or_install()
        self.prefix = prefix
        self.port = free_port()
        for sub in ("tmp", "logs"):
            (prefix / sub).mkdir(parents=True, exist_ok=True)
        self.conf = prefix / "nginx.conf"
        self.conf.write_text(CONF.format(prefix=prefix, port=self.port, root=root))
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def __enter__(self) -> Nginx:
        self.proc = subprocess.Popen([self.binary, "-p", str(self.prefix), "-c", str(self.conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = (self.prefix / "error.log").read_text(errors="replace") if (
                    self.prefix / "error.log").exists() else ""
                raise NginxUnavailable(f"nginx exited with {self.proc.returncode}: {err.strip()[-300:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.__exit__()
        raise NginxUnavailable(f"nginx did not listen on 127.0.0.1:{self.port} within 10 s")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # nginx: SIGTERM is a fast shutdown of master and workers
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
