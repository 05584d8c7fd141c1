"""sd_notify(3) without libsystemd: one datagram per state change (the model is nobodd/systemd.py).

Without NOTIFY_SOCKET (a terminal, a test, another supervisor) every call is a
no-op, so the daemon calls these unconditionally. The socket address is read
from the environment at each call and a fresh socket is used for each datagram:
calls are rare (a ping every few seconds) and nothing stale survives a fork.
Forked workers inherit NOTIFY_SOCKET but the unit says NotifyAccess=main, so
only the main process may speak for the service.
"""

from __future__ import annotations

import os
import socket
import time

from datasetd import logs

log = logs.get()

_failure_logged = False


def _address() -> str | None:
    """The socket named by NOTIFY_SOCKET in the form socket.sendto wants, or None."""
    raw = os.environ.get("NOTIFY_SOCKET", "")
    if raw.startswith("@") and len(raw) > 1:
        return "\0" + raw[1:]  # Linux abstract namespace: no file on disk
    if raw.startswith("/"):
        return raw
    return None


def _log_failure_once(address: str, reason: str) -> None:
    # A supervisor that went away must not fill the journal with one line per ping.
    global _failure_logged
    if not _failure_logged:
        _failure_logged = True
        log.warning("notify.failed", socket=address.replace("\0", "@"), reason=reason)


def notify(state: str) -> bool:
    """Send `state` (e.g. "READY=1", lines joined by newlines) to the service manager.

    Returns True when the datagram was sent, False when there is no usable
    NOTIFY_SOCKET or the send failed. Never raises: losing a status line must
    not stop a download.
    """
    address = _address()
    if address is None:
        raw = os.environ.get("NOTIFY_SOCKET")
        if raw:
            _log_failure_once(raw, "NOTIFY_SOCKET is neither a path nor an @abstract name")
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode("utf-8"), address)
    except OSError as exc:
        _log_failure_once(address, f"{type(exc).__name__}: {exc.strerror or exc}")
        return False
    return True


def ready() -> None:
    """Startup is done: systemd moves the unit from activating to active."""
    notify("READY=1")


def status(line: str) -> None:
    """One human line for `systemctl status`; newlines would end the field early, so they are flattened."""
    notify("STATUS=" + " ".join(line.splitlines()))


def stopping() -> None:
    notify("STOPPING=1")


def reloading() -> None:
    """Call on SIGHUP before rereading the manifest, then ready() when done.

    MONOTONIC_USEC lets systemd (253+, Type=notify-reload) tie this message to
    the reload request; older managers ignore it.
    """
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notify(f"RELOADING=1\nMONOTONIC_USEC={usec}")


def watchdog_ping() -> None:
    notify("WATCHDOG=1")


def watchdog_interval() -> float | None:
    """Seconds between watchdog pings (half of WATCHDOG_USEC), or None when no watchdog watches us.

    WATCHDOG_PID names the process the watchdog is meant for; a forked child
    or a process started by the daemon inherits the variables but is not it.
    """
    usec_raw = os.environ.get("WATCHDOG_USEC")
    if not usec_raw:
        return None
    pid_raw = os.environ.get("WATCHDOG_PID")
    try:
        usec = int(usec_raw)
        if pid_raw and int(pid_raw) != os.getpid():
            return None
    except ValueError:
        return None
    if usec <= 0:
        return None
    return usec / 2_000_000
