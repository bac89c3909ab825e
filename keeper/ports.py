"""The health port's listening sockets, bound the way `keeper run` binds them.

`keeper run` binds its health port before it migrates or connects to anything, so a second
keeper configured with the same port stops at once with `PortUnavailable` (exit status 78,
which systemd does not restart) instead of failing after its start-up work. `keeper
check-config` binds the port the same way and lets it go at once.
"""

from __future__ import annotations

import errno
import socket

from keeper.errors import PermanentError

BACKLOG = 100  # asyncio's default for create_server


class PortUnavailable(PermanentError):
    """The health port cannot be listened on."""

    in_use = False  # another socket listens there (EADDRINUSE)


def _problem(host: str, port: int, exc: OSError) -> PortUnavailable:
    where = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
    if exc.errno == errno.EADDRINUSE:
        help_text = (
            "another program listens there (another keeper with the same [health] port?): "
            "stop it, or give this keeper another health.port"
        )
    else:
        help_text = "set health.host to an address of this machine and health.port to a free port"
    reason = exc.strerror or type(exc).__name__
    problem = PortUnavailable(f"health.port: cannot listen on {where}: {reason}", help=help_text)
    problem.in_use = exc.errno == errno.EADDRINUSE
    return problem


def listen(host: str, port: int) -> list[socket.socket]:
    """Listening, non-blocking TCP sockets on `host`:`port`, one per address `host` names (as
    asyncio's `create_server` would bind them: SO_REUSEADDR, IPv6 sockets IPv6 only). Raises
    `PortUnavailable` naming the field when any of them cannot be bound."""
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise PortUnavailable(
            f"health.host: {host!r} does not resolve ({exc.strerror})",
            help="set health.host to an address of this machine, e.g. 127.0.0.1",
        ) from None
    bound: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            bound.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(BACKLOG)
            sock.setblocking(False)
    except OSError as exc:
        for sock in bound:
            sock.close()
        raise _problem(host, port, exc) from None
    return bound


def check(host: str, port: int) -> str:
    """Bind `host`:`port` and let it go: what `keeper run` would listen on, in words; raises
    `PortUnavailable` as `listen` does."""
    sockets = listen(host, port)
    try:
        return ", ".join(_name(s) for s in sockets)
    finally:
        for sock in sockets:
            sock.close()


def _name(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if sock.family == socket.AF_INET6 else f"{host}:{port}"
