"""Talking to the health port over a socket as a client would: requests, raw exchanges and the
parsed replies."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import anyio
import anyio.abc

from keeper.service.health import (
    HealthState,
    serve,
)


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def parse_reply(raw: bytes) -> Reply:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("ascii").split("\r\n")
    version, status, _ = lines[0].split(" ", 2)
    assert version == "HTTP/1.1"
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Reply(int(status), headers, body)


async def exchange(port: int, payload: bytes, *, then_wait: bool = True) -> bytes:
    """Send `payload` on a new connection and read until the server closes it (b"" when it
    closed without answering, including by a reset)."""
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        if payload:
            await stream.send(payload)
        received = bytearray()
        with anyio.fail_after(30):
            while then_wait:
                try:
                    received += await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionResetError):
                    break
        return bytes(received)


async def request(
    port: int,
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> Reply:
    """One well-formed HTTP/1.1 request."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
    return parse_reply(await exchange(port, raw))


@asynccontextmanager
async def serving(state: HealthState, **kwargs: Any) -> AsyncIterator[int]:
    """`serve` on a free port of 127.0.0.1 for the block; yields the port."""
    async with anyio.create_task_group() as tg:
        port: int = await tg.start(partial(serve, "127.0.0.1", 0, state, **kwargs))
        try:
            yield port
        finally:
            tg.cancel_scope.cancel()
