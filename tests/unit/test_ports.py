"""The health port's binding (`keeper.ports`): real sockets on this machine."""

from __future__ import annotations

import socket

import pytest

from keeper.errors import EX_CONFIG
from keeper.ports import PortUnavailable, check, listen


def test_a_free_port_is_bound_and_let_go() -> None:
    sockets = listen("127.0.0.1", 0)
    port = sockets[0].getsockname()[1]
    for sock in sockets:
        sock.close()
    assert check("127.0.0.1", port) == f"127.0.0.1:{port}"
    assert check("127.0.0.1", port) == f"127.0.0.1:{port}"  # let go: bindable again


def test_a_held_port_is_a_configuration_error() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        with pytest.raises(PortUnavailable) as caught:
            listen("127.0.0.1", port)
    problem = caught.value
    assert problem.in_use and problem.exit_code == EX_CONFIG
    assert (
        problem.message == f"health.port: cannot listen on 127.0.0.1:{port}: Address already in use"
    )
    assert problem.help is not None and "another health.port" in problem.help


def test_an_address_of_another_machine() -> None:
    with pytest.raises(PortUnavailable) as caught:
        listen("192.0.2.1", 0)  # TEST-NET-1: never an address of this machine
    assert not caught.value.in_use
    assert caught.value.message.startswith("health.port: cannot listen on 192.0.2.1:0: ")
    assert "health.host" in (caught.value.help or "")


def test_a_host_that_does_not_resolve() -> None:
    with pytest.raises(PortUnavailable) as caught:
        listen("no-such-host.invalid", 0)
    assert caught.value.message.startswith("health.host: 'no-such-host.invalid' does not resolve")
