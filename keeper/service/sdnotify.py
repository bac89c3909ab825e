"""systemd's service notification protocol (sd_notify(3)) over a plain socket.

Under `Type=notify` systemd passes an AF_UNIX datagram socket in `$NOTIFY_SOCKET` (a path, or
`@name` for the abstract namespace) and reads newline-separated `KEY=value` assignments from it:
`READY=1` ends start-up, `STOPPING=1` starts shutdown, `STATUS=` is shown by `systemctl status`,
and `WATCHDOG=1` must arrive at least every `WatchdogSec=` (announced in `$WATCHDOG_USEC`).

Outside systemd the variable is unset and every call is a no-op returning False. A failed send
never raises: the daemon must not die because its supervisor's socket is gone. The first
failure is logged at warning, later ones at debug, so a missing socket cannot flood the journal.
Sends never block: a full socket queue drops the message (systemd reads its socket promptly, and
a blocked send would stall the event loop these functions are called from).
"""

from __future__ import annotations

import os
import socket

import structlog

log = structlog.get_logger(__name__)

NOTIFY_SOCKET_ENV = "NOTIFY_SOCKET"

_warned = False


def _address(value: str) -> str | None:
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None


def _one_line(text: str) -> str:
    # A newline would start a new assignment: a status text must not be able to inject one.
    return " ".join(text.splitlines())


def notify(*lines: str) -> bool:
    """Send `lines` (each `KEY=value`) as one datagram to `$NOTIFY_SOCKET`.

    Returns True when the datagram was sent, False when `NOTIFY_SOCKET` is unset or the send
    failed. A line holding a newline or no `=` is a programming error (ValueError).
    """
    global _warned
    if not lines:
        raise ValueError("nothing to send")
    for line in lines:
        if "\n" in line or "=" not in line:
            raise ValueError(f"not a single KEY=value line: {line!r}")
    value = os.environ.get(NOTIFY_SOCKET_ENV)
    if not value:
        return False
    address = _address(value)
    try:
        if address is None:
            raise OSError(f"unsupported address {value!r} (expected /path or @abstract)")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto("\n".join(lines).encode(), socket.MSG_DONTWAIT, address)
    except OSError as exc:
        level = log.debug if _warned else log.warning
        _warned = True
        level("sd_notify_failed", socket=value, error=str(exc), message=lines[0])
        return False
    return True


def ready(status: str | None = None) -> bool:
    """Tell systemd start-up is complete (`READY=1`), with an optional status line."""
    lines = ["READY=1"]
    if status is not None:
        lines.append(f"STATUS={_one_line(status)}")
    return notify(*lines)


def stopping(status: str | None = None) -> bool:
    """Tell systemd the service is shutting down (`STOPPING=1`)."""
    lines = ["STOPPING=1"]
    if status is not None:
        lines.append(f"STATUS={_one_line(status)}")
    return notify(*lines)


def status(text: str) -> bool:
    """Set the one-line status `systemctl status` shows (`STATUS=`)."""
    return notify(f"STATUS={_one_line(text)}")


def watchdog() -> bool:
    """Ping the watchdog (`WATCHDOG=1`); see `watchdog_interval` for how often."""
    return notify("WATCHDOG=1")


def watchdog_interval() -> float | None:
    """Seconds between watchdog pings: half of `$WATCHDOG_USEC`, as sd_watchdog_enabled(3)
    advises; None when the watchdog is off, the value is not a positive integer, or
    `$WATCHDOG_PID` names another process (the variables were inherited, not meant for us)."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    try:
        interval = int(usec)
        if pid and int(pid) != os.getpid():
            return None
    except ValueError:
        return None
    if interval <= 0:
        return None
    return interval / 2 / 1_000_000
