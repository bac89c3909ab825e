"""What the health port checks before aiohttp sees a connection, and what it answers itself.

aiohttp serves the port (keeper.service.health), but its parser is lenient where this port is
strict (bare LF, whitespace before a colon, absolute-form targets, a missing Host, any header
bytes), answers 400 where the port answers 431 or 505, and it has no limit on connections and
no deadline for a request head. So each connection starts with a `Gate`, an asyncio protocol
that reads the request head (at most `MAX_HEAD` bytes within `read_timeout` seconds), parses it
strictly with `parse_request`, and only then hands the connection to aiohttp's protocol with the
bytes it holds. Everything it refuses (400, 408, 431, 503, 505) it answers itself.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import structlog

from keeper import metrics, secrets
from keeper.errors import KeeperError

log = structlog.get_logger(__name__)

MAX_HEAD = 8 * 1024  # request line + headers, bytes
MAX_HEADERS = 100
LINGER = 1.0  # after a refusal, seconds to drain what the client still sends (see Gate._refuse)

# RFC 9110 token characters (methods and header names).
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_VERSION = re.compile(r"^HTTP/(\d)\.(\d)$")
# Origin-form target: an absolute path of visible ASCII, optional query, no fragment.
_ORIGIN_FORM = re.compile(r"^/[\x21-\x7e]*$")
_FIELD_VALUE = re.compile(r"^[\t\x20-\x7e]*$")


# ---------------------------------------------------------------------- requests


class BadRequest(KeeperError):
    """The request is not one this server accepts."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Request:
    """A parsed request head."""

    method: str
    target: str
    path: str
    query: str
    version: str
    headers: dict[str, str]  # lower-case names


def parse_request(head: bytes) -> Request:
    """Parse a request head (request line and header lines, without the final blank line).

    Strict on purpose: ASCII only, CRLF line ends, `METHOD SP origin-form SP HTTP/1.x`, header
    lines `name: value` with a token name and no whitespace before the colon, no line folding,
    at most `MAX_HEADERS` headers, exactly one `Host` in HTTP/1.1. Raises `BadRequest` (400, or
    505 for another HTTP version).
    """
    if len(head) > MAX_HEAD:
        raise BadRequest("request head too large", 431)
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        raise BadRequest("non-ASCII bytes in the request head") from None
    lines = text.split("\r\n")
    if any("\r" in line or "\n" in line or "\x00" in line for line in lines):
        raise BadRequest("bare CR, LF or NUL in the request head")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise BadRequest("request line is not `METHOD target HTTP/1.1`")
    method, target, version = parts
    if not _TOKEN.match(method):
        raise BadRequest("invalid method")
    match = _VERSION.match(version)
    if match is None:
        raise BadRequest("invalid HTTP version")
    if match.group(1) != "1":
        raise BadRequest("only HTTP/1.x is served", 505)
    if not _ORIGIN_FORM.match(target) or "#" in target:
        raise BadRequest("the target must be an absolute path (no proxy requests)")
    path, _, query = target.partition("?")

    headers: dict[str, str] = {}
    seen: dict[str, int] = {}
    fields = lines[1:]
    if len(fields) > MAX_HEADERS:
        raise BadRequest("too many header fields", 431)
    for line in fields:
        if not line:
            raise BadRequest("empty header line")
        if line[0] in " \t":
            raise BadRequest("obsolete line folding")
        name, colon, value = line.partition(":")
        if not colon or not _TOKEN.match(name):
            raise BadRequest("malformed header field")
        value = value.strip(" \t")
        if not _FIELD_VALUE.match(value):
            raise BadRequest("invalid characters in a header value")
        key = name.lower()
        seen[key] = seen.get(key, 0) + 1
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    if version != "HTTP/1.0" and seen.get("host") != 1:
        raise BadRequest("HTTP/1.1 needs exactly one Host header")
    if seen.get("content-length", 0) > 1 or (
        seen.get("content-length") and "transfer-encoding" in seen
    ):
        raise BadRequest("ambiguous message length")
    return Request(method, target, path, query, version, headers)


@dataclass
class HeadReader:
    """Collects a request head from the chunks a connection receives. It holds at most
    `limit` + 4 bytes: the chunk that crosses the limit without ending the head is refused."""

    limit: int = MAX_HEAD
    buffer: bytearray = field(default_factory=bytearray)
    tail: bytes = b""  # what came after the head (the start of a body), once complete

    def feed(self, chunk: bytes) -> bytes | None:
        """The head without its blank line once complete, else None. Raises `BadRequest`
        (431) past the limit."""
        data = bytes(self.buffer) + chunk
        end = data.find(b"\r\n\r\n")
        if end > self.limit or (end < 0 and len(data) >= self.limit + 4):
            raise BadRequest("request head too large", 431)
        if end < 0:
            self.buffer[:] = data
            return None
        self.tail = data[end + 4 :]
        return data[:end]

    def eof(self) -> None:
        """The client closed its side: `BadRequest` when it did so mid-head; nothing to answer
        when it sent nothing."""
        if self.buffer:
            raise BadRequest("the connection closed mid-request")


# ---------------------------------------------------------------------- responses


@dataclass(frozen=True)
class Response:
    """A complete response (the body is always small)."""

    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


def text_response(status: int, text: str, *headers: tuple[str, str]) -> Response:
    """A plain-text response."""
    return Response(status, text.encode(), headers=headers)


def json_response(status: int, data: Any) -> Response:
    """A JSON response (`data` must be JSON-safe)."""
    body = json.dumps(data, indent=2) + "\n"
    return Response(status, body.encode(), "application/json")


# Sent with every answer of the port, the gate's and aiohttp's.
COMMON_HEADERS = (("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff"))


def encode_response(response: Response) -> bytes:
    """The bytes on the wire of an answer the gate gives itself (aiohttp writes the others).
    The body goes through `keeper.secrets.scrub`, as aiohttp's answers do (see
    keeper.service.health.to_web)."""
    body = secrets.scrub_bytes(response.body)
    lines = [
        f"HTTP/1.1 {response.status} {HTTPStatus(response.status).phrase}",
        f"Content-Type: {response.content_type}",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *(f"{name}: {value}" for name, value in COMMON_HEADERS + response.headers),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + body


# ---------------------------------------------------------------------- the gate


@dataclass
class Gates:
    """The gates of one listening port: the protocol factory given to `loop.create_server`.
    `handler` makes aiohttp's protocol for a connection whose head passed; `answer_timeout`
    bounds what follows (the handler and the client reading the answer)."""

    handler: Callable[[], asyncio.Protocol]
    read_timeout: float
    answer_timeout: float
    max_connections: int
    open: set[Gate] = field(default_factory=set)  # connections holding a slot

    def __call__(self) -> Gate:
        return Gate(self)

    def abort_all(self) -> None:
        """Drop every connection still open (the port is closing)."""
        for gate in list(self.open):
            if gate.transport is not None:
                gate.transport.abort()


class Gate(asyncio.Protocol):
    """One connection: its head read and checked here, then served by aiohttp's protocol, to
    which every later event is passed on."""

    def __init__(self, gates: Gates) -> None:
        self.gates = gates
        self.transport: asyncio.Transport | None = None
        self.reader = HeadReader()
        self.inner: asyncio.Protocol | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.drained: int | None = None  # bytes dropped after a refusal; None before one

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)  # a TCP server's
        self.transport = transport
        if len(self.gates.open) >= self.gates.max_connections:
            self._refuse(text_response(503, "too many connections\n"))
            return
        self.gates.open.add(self)
        self._deadline(self.gates.read_timeout, self._read_timed_out)

    def data_received(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.data_received(data)
        elif self.drained is not None:
            self.drained += len(data)
            if self.drained >= MAX_HEAD and self.transport is not None:
                self.transport.close()
        else:
            try:
                head = self.reader.feed(data)
                if head is not None:
                    self._pass_on(parse_request(head), head)
            except BadRequest as exc:
                log.debug("http_bad_request", status=exc.status, detail=exc.message)
                self._refuse(text_response(exc.status, exc.message + "\n"))

    def eof_received(self) -> bool | None:
        if self.inner is not None:
            # A client may half-close once it has sent its request: keep the connection open
            # for the answer (aiohttp's protocol would close it at once); aiohttp closes it
            # after answering, and the answer deadline bounds the wait.
            self.inner.eof_received()
            return True
        if self.drained is None:
            try:
                self.reader.eof()
            except BadRequest as exc:
                self._refuse(text_response(exc.status, exc.message + "\n"))
        return None  # the transport closes once what was written is sent

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.gates.open.discard(self)
        if self.inner is not None:
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()

    def _pass_on(self, request: Request, head: bytes) -> None:
        """Hand the connection to aiohttp with the head and what followed it. The request line
        is passed on as HTTP/1.1: aiohttp answers in the request's version, and this port has
        always answered HTTP/1.1 (RFC 9110 §2.5), whatever 1.x the client spoke; an HTTP/1.0
        request without a Host gets an empty one, which HTTP/1.1 requires (RFC 9112 §3.2)."""
        assert self.transport is not None
        line = f"{request.method} {request.target} HTTP/1.1".encode("ascii")
        fields = head[head.find(b"\r\n") :] if b"\r\n" in head else b""
        if "host" not in request.headers:
            fields += b"\r\nHost:"
        self.inner = self.gates.handler()
        self.inner.connection_made(self.transport)
        self._deadline(self.gates.answer_timeout, self.transport.abort)
        self.inner.data_received(line + fields + b"\r\n\r\n" + self.reader.tail)

    def _read_timed_out(self) -> None:
        self._refuse(text_response(408, "request not received in time\n"))

    def _refuse(self, response: Response) -> None:
        """Answer, half-close, then drain (and drop) at most MAX_HEAD more bytes for LINGER
        seconds: closing with unread bytes would reset the connection, and the client could
        lose the answer before reading it."""
        assert self.transport is not None
        metrics.HTTP_REQUESTS.labels(path="other", code=str(response.status)).inc()
        self.drained = 0
        self.transport.write(encode_response(response))
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._deadline(LINGER, self.transport.close)

    def _deadline(self, seconds: float, then: Callable[[], object]) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = asyncio.get_running_loop().call_later(seconds, then)
