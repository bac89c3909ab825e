"""A fake systemd notification socket (`$NOTIFY_SOCKET`) for tests.

`NotifySocket` binds an AF_UNIX datagram socket, as systemd does for a `Type=notify` service,
and a background thread collects every datagram with the sender's PID (SO_PASSCRED, which is
how systemd checks `NotifyAccess=`). Give its `address` to the process under test as
`NOTIFY_SOCKET` (`env()` builds the variables, `monkeypatch.setenv` for in-process code), then
wait for what it should send::

    with NotifySocket() as sock:
        proc = subprocess.Popen(["keeper", "run", ...], env={**os.environ, **sock.env()})
        ready = sock.wait_for(lambda m: m.fields.get("READY") == "1", timeout=30)
        assert ready.pid == proc.pid

Without a path the socket lives in a fresh short directory under the system temp directory:
pytest's `tmp_path` can exceed the 108 bytes a socket path may hold. `abstract=True` binds in
the abstract namespace instead (`NOTIFY_SOCKET=@name`).

The `notify_socket` fixture yields one with `NOTIFY_SOCKET` set in this process's environment;
import it into a conftest.py (listed in its `__all__`) or a test module to use it.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import pytest

_UCRED = struct.Struct("iII")  # struct ucred: pid, uid, gid


@dataclass(frozen=True)
class Notification:
    """One datagram: its bytes, its `KEY=value` lines (a repeated key keeps its last value)
    and the sender's PID (None if the kernel passed no credentials)."""

    raw: bytes
    pid: int | None
    fields: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, raw: bytes, pid: int | None) -> Notification:
        """Split a datagram into its assignments."""
        fields: dict[str, str] = {}
        for line in raw.decode("utf-8", "replace").split("\n"):
            key, sep, value = line.partition("=")
            if sep:
                fields[key] = value
        return cls(raw=raw, pid=pid, fields=fields)


class NotifySocket:
    """A bound notification socket collecting datagrams in a thread (see the module doc)."""

    def __init__(self, path: Path | str | None = None, *, abstract: bool = False) -> None:
        self._own_dir: str | None = None
        if abstract:
            name = f"keeper-test-notify-{os.getpid()}-{id(self):x}"
            bind_to: str = "\0" + name
            self.address = "@" + name
        else:
            if path is None:
                self._own_dir = tempfile.mkdtemp(prefix="keeper-notify-")
                path = Path(self._own_dir) / "notify"
            bind_to = self.address = str(path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self._sock.bind(bind_to)
        self._sock.settimeout(0.05)
        self._messages: list[Notification] = []
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._collect, name="notify-socket", daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        space = socket.CMSG_SPACE(_UCRED.size)
        while not self._stop.is_set():
            try:
                raw, ancillary, _flags, _addr = self._sock.recvmsg(65536, space)
            except TimeoutError:
                continue
            except OSError:
                return  # closed
            pid = None
            for level, kind, data in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = _UCRED.unpack(data[: _UCRED.size])[0]
            with self._changed:
                self._messages.append(Notification.parse(raw, pid))
                self._changed.notify_all()

    @property
    def messages(self) -> list[Notification]:
        """Every datagram received so far, in order (a copy)."""
        with self._changed:
            return list(self._messages)

    def env(self) -> dict[str, str]:
        """The environment that points a process at this socket."""
        return {"NOTIFY_SOCKET": self.address}

    def wait_for(
        self, predicate: Callable[[Notification], bool], timeout: float = 10.0, *, start: int = 0
    ) -> Notification:
        """The first datagram from index `start` on that satisfies `predicate`, waiting up to
        `timeout` seconds for it to arrive; AssertionError listing what came if none does."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for message in self._messages[start:]:
                    if predicate(message):
                        return message
                left = deadline - time.monotonic()
                if left <= 0:
                    got = [m.raw for m in self._messages]
                    raise AssertionError(f"no matching notification within {timeout}s; got {got}")
                self._changed.wait(left)

    def close(self) -> None:
        """Stop the thread, close the socket and remove what it created."""
        self._stop.set()
        self._thread.join()
        self._sock.close()
        if self._own_dir is not None:
            shutil.rmtree(self._own_dir, ignore_errors=True)

    def __enter__(self) -> NotifySocket:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@pytest.fixture
def notify_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifySocket]:
    """A `NotifySocket` with `NOTIFY_SOCKET` pointing at it (and no watchdog variables)."""
    with NotifySocket() as sock:
        monkeypatch.setenv("NOTIFY_SOCKET", sock.address)
        monkeypatch.delenv("WATCHDOG_USEC", raising=False)
        monkeypatch.delenv("WATCHDOG_PID", raising=False)
        yield sock
