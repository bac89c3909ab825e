"""keeper.service.sdnotify against a real AF_UNIX datagram socket standing in for systemd's."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from keeper.service import sdnotify
from tests.support.notify_socket import Notification, NotifySocket


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(sdnotify, "_warned", False)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory whose socket paths fit in sun_path (108 bytes), unlike a deep tmp_path."""
    path = Path(tempfile.mkdtemp(prefix="keeper-sdn-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(params=["path", "abstract"])
def sock(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifySocket]:
    with NotifySocket(abstract=request.param == "abstract") as s:
        monkeypatch.setenv("NOTIFY_SOCKET", s.address)
        yield s


def _first(sock: NotifySocket) -> Notification:
    return sock.wait_for(lambda _: True, timeout=5)


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (lambda: sdnotify.ready(), b"READY=1"),
        (lambda: sdnotify.ready("indexing at block 12"), b"READY=1\nSTATUS=indexing at block 12"),
        (lambda: sdnotify.stopping(), b"STOPPING=1"),
        (lambda: sdnotify.stopping("SIGTERM"), b"STOPPING=1\nSTATUS=SIGTERM"),
        (lambda: sdnotify.status("backfill 40%"), b"STATUS=backfill 40%"),
        (lambda: sdnotify.watchdog(), b"WATCHDOG=1"),
        (lambda: sdnotify.notify("A=1", "B=2"), b"A=1\nB=2"),
        (lambda: sdnotify.status("två\nlines"), "STATUS=två lines".encode()),
    ],
    ids=["ready", "ready+status", "stopping", "stopping+status", "status", "watchdog", "raw",
         "status-one-line"],
)  # fmt: skip
def test_exact_bytes(sock: NotifySocket, call: Callable[[], bool], expected: bytes) -> None:
    assert call() is True
    message = _first(sock)
    assert message.raw == expected
    assert message.pid == os.getpid()


def test_messages_arrive_in_order(sock: NotifySocket) -> None:
    sdnotify.status("starting")
    sdnotify.ready()
    sdnotify.watchdog()
    sdnotify.stopping()
    sock.wait_for(lambda m: "STOPPING" in m.fields, timeout=5)
    assert [m.raw for m in sock.messages] == [
        b"STATUS=starting",
        b"READY=1",
        b"WATCHDOG=1",
        b"STOPPING=1",
    ]


def test_bad_lines_are_refused_before_sending(sock: NotifySocket) -> None:
    with pytest.raises(ValueError, match="KEY=value"):
        sdnotify.notify("READY=1\nSTATUS=x")
    with pytest.raises(ValueError, match="KEY=value"):
        sdnotify.notify("READY")
    with pytest.raises(ValueError, match="nothing"):
        sdnotify.notify()
    assert sock.messages == []


def test_unset_socket_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[object] = []
    monkeypatch.setattr(socket.socket, "sendto", lambda *a: sent.append(a))
    assert sdnotify.ready() is False
    assert sdnotify.watchdog() is False
    assert sdnotify.status("x") is False
    assert sdnotify.stopping() is False
    monkeypatch.setenv("NOTIFY_SOCKET", "")
    assert sdnotify.ready() is False
    assert sent == []


def test_missing_socket_warns_once_and_never_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    with capture_logs() as logs:
        assert sdnotify.ready() is False
        assert sdnotify.watchdog() is False
        assert sdnotify.status("x") is False
    assert [entry["log_level"] for entry in logs] == ["warning", "debug", "debug"]
    assert logs[0]["event"] == "sd_notify_failed"
    assert logs[0]["socket"] == str(tmp_path / "gone")
    assert logs[0]["message"] == "READY=1"


@pytest.mark.parametrize("value", ["relative/path", "vsock:2:1234", "@"])
def test_unusable_address_is_a_failed_send(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # "@" alone is the abstract name "": nothing is bound there, so the send fails too.
    monkeypatch.setenv("NOTIFY_SOCKET", value)
    with capture_logs() as logs:
        assert sdnotify.ready() is False
    assert logs[0]["event"] == "sd_notify_failed"


def test_not_a_datagram_socket_never_raises(
    short_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = short_dir / "stream"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        listener.listen()
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert sdnotify.ready() is False


def test_full_queue_drops_instead_of_blocking(
    short_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = short_dir / "n"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:  # never read
        receiver.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        results = []
        for _ in range(100_000):  # the queue holds net.unix.max_dgram_qlen datagrams
            results.append(sdnotify.status("x"))
            if not results[-1]:
                break
    assert results[0] is True
    assert results[-1] is False


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        ("30000000", None, 15.0),
        ("30000000", "self", 15.0),
        ("1000000", None, 0.5),
        ("1", None, 0.0000005),
        ("30000000", "1", None),  # inherited from another process
        ("30000000", "junk", None),
        (None, None, None),
        ("", None, None),
        ("0", None, None),
        ("-5", None, None),
        ("30s", None, None),
    ],
)
def test_watchdog_interval(
    usec: str | None, pid: str | None, expected: float | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if usec is not None:
        monkeypatch.setenv("WATCHDOG_USEC", usec)
    if pid is not None:
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()) if pid == "self" else pid)
    assert sdnotify.watchdog_interval() == expected
