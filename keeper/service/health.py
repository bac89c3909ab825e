"""The read-only health and metrics port: /healthz, /readyz, /metrics and /status.

A deliberately small HTTP/1.1 server on anyio: one request per connection (the answer says
`Connection: close`), origin-form GET and HEAD only, the request line and headers read within
`MAX_HEAD` bytes and `read_timeout` seconds, a request body never read beyond that limit, and at
most `max_connections` connections at once (the next ones get 503). Nothing a request can say
changes any state: every handler only reads, and the database is read in read-only
transactions. A failing handler answers 500 and the server goes on.

- `/healthz`: 200 `ok` while the event loop runs; no I/O.
- `/readyz`: 200 when the database and the RPC answer, the backfill is done, the index lags the
  head by at most `max_lag_seconds` of chain time and this process is the leader; else 503
  with a `reason` naming each failing check. The RPC answer is cached for `PROBE_TTL`, so a
  burst of probes is one RPC call.
- `/metrics`: the Prometheus registry, after refreshing the gauges read from the database
  (at most once per `PROBE_TTL`; served as they were if the database does not answer).
- `/status`: `keeper.service.status.collect_status` of the chain plus this process (role, pid,
  uptime).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
import asyncpg
import structlog
from anyio.abc import SocketAttribute
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from keeper import metrics, secrets
from keeper.chain.rpc import ChainClient
from keeper.db.queries import load_queries
from keeper.errors import KeeperError
from keeper.kinds import INTENT_KINDS
from keeper.service.status import OPEN_STATES, collect_status

log = structlog.get_logger(__name__)

MAX_HEAD = 8 * 1024  # request line + headers, bytes
MAX_HEADERS = 100
READ_TIMEOUT = 5.0  # seconds for the whole request head
WRITE_TIMEOUT = 5.0
LINGER = 1.0  # after answering, seconds to drain what the client still sends (see _linger)
MAX_CONNECTIONS = 32
DB_TIMEOUT = 2.0
RPC_TIMEOUT = 2.0
STATUS_TIMEOUT = 10.0
PROBE_TTL = 1.0
DB_CONCURRENCY = 2  # connections the port may borrow from the daemon's pool at once
ACCEPT_BACKOFF = 0.1
ALLOWED_METHODS = ("GET", "HEAD")
QUERY_FILE = "status.sql"

REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}

# RFC 9110 token characters (methods and header names).
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_VERSION = re.compile(r"^HTTP/(\d)\.(\d)$")
# Origin-form target: an absolute path of visible ASCII, optional query, no fragment.
_ORIGIN_FORM = re.compile(r"^/[\x21-\x7e]*$")
_FIELD_VALUE = re.compile(r"^[\t\x20-\x7e]*$")

# What a database probe may fail with: unreachable or refusing (OSError, asyncpg's connection
# and interface errors, a closed pool), a server error, or our own timeout.
_DB_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)


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


async def read_head(stream: anyio.abc.ByteReceiveStream, limit: int = MAX_HEAD) -> bytes:
    """Receive up to the blank line ending the request head; return the head without it.

    Never receives more than `limit` + 4 bytes. Raises `BadRequest` (431) past the limit or
    (400) when the client closes mid-head, and `anyio.EndOfStream` when it closes before
    sending anything.
    """
    buffer = bytearray()
    while True:
        end = buffer.find(b"\r\n\r\n")
        if end >= 0:
            if end > limit:
                raise BadRequest("request head too large", 431)
            return bytes(buffer[:end])
        room = limit + 4 - len(buffer)
        if room <= 0:
            raise BadRequest("request head too large", 431)
        try:
            chunk = await stream.receive(min(room, 4096))
        except anyio.EndOfStream:
            if buffer:
                raise BadRequest("the connection closed mid-request") from None
            raise
        buffer += chunk


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


def encode_response(response: Response, *, head_only: bool = False) -> bytes:
    """The bytes on the wire; `head_only` for HEAD (same headers, no body). The body goes
    through `keeper.secrets.scrub`: /status carries error texts from the RPC and the database,
    which may quote a secret."""
    body = secrets.scrub_bytes(response.body)
    lines = [
        f"HTTP/1.1 {response.status} {REASONS.get(response.status, 'Unknown')}",
        f"Content-Type: {response.content_type}",
        f"Content-Length: {len(body)}",
        "Connection: close",
        "Cache-Control: no-store",
        "X-Content-Type-Options: nosniff",
        *(f"{name}: {value}" for name, value in response.headers),
    ]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
    return head if head_only else head + body


# ---------------------------------------------------------------------- the server


@dataclass
class HealthState:
    """What the daemon tells the health port. The daemon updates `role`, `pool`, `client` and
    `last_error` as it goes; the port only reads them."""

    chain_id: int
    max_lag_seconds: float = 120.0
    role: str = "starting"  # "starting" | "standby" | "leader" | "stopping"
    pool: asyncpg.Pool | None = None  # set once connected
    client: ChainClient | None = None  # set once created
    last_error: str | None = None  # the latest loop error text (never secrets)
    started_at: float = field(default_factory=time.time)


class _Cached:
    """The result of an async function that never raises, kept for `ttl` seconds; concurrent
    callers wait for one call instead of making their own."""

    def __init__(self, fn: Callable[[], Awaitable[dict[str, Any]]], ttl: float) -> None:
        self._fn = fn
        self._ttl = ttl
        self._lock = anyio.Lock()
        self._value: dict[str, Any] = {}
        self._at: float | None = None

    async def get(self) -> dict[str, Any]:
        async with self._lock:
            if self._at is None or time.monotonic() - self._at >= self._ttl:
                self._value = await self._fn()
                self._at = time.monotonic()
            return self._value


class HealthServer:
    """The request handling of the health port (`serve` runs it on a listener)."""

    def __init__(
        self,
        state: HealthState,
        *,
        read_timeout: float = READ_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.state = state
        self.read_timeout = read_timeout
        self.connections = anyio.CapacityLimiter(max_connections)
        self.db_slots = anyio.CapacityLimiter(DB_CONCURRENCY)
        self.q = load_queries(QUERY_FILE)
        self.rpc_probe = _Cached(self._probe_rpc, PROBE_TTL)
        self.gauges = _Cached(self._refresh_gauges, PROBE_TTL)
        self.routes: dict[str, Callable[[], Awaitable[Response]]] = {
            "/healthz": self.healthz,
            "/readyz": self.readyz,
            "/metrics": self.metrics,
            "/status": self.status,
        }

    # ------------------------------------------------------------------ connections

    async def handle(self, stream: anyio.abc.ByteStream) -> None:
        """Serve one connection: one request, one response, close."""
        async with stream:
            try:
                await self._connection(stream)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                pass  # the client went away
            except Exception:
                log.exception("http_connection_failed")

    async def _connection(self, stream: anyio.abc.ByteStream) -> None:
        try:
            self.connections.acquire_nowait()
        except anyio.WouldBlock:
            await self._send(stream, text_response(503, "too many connections\n"), "other")
            return
        try:
            answer = await self._answer(stream)
            if answer is None:
                return
            response, path, head_only = answer
            await self._send(stream, response, path, head_only=head_only)
            await self._linger(stream)
        finally:
            self.connections.release()

    async def _answer(self, stream: anyio.abc.ByteStream) -> tuple[Response, str, bool] | None:
        """Read and answer the request: (response, metrics path label, HEAD?); None when the
        client closed without a request."""
        request: Request | None = None
        with anyio.move_on_after(self.read_timeout):
            try:
                request = parse_request(await read_head(stream))
            except anyio.EndOfStream:
                return None
            except BadRequest as exc:
                log.debug("http_bad_request", status=exc.status, detail=exc.message)
                return text_response(exc.status, exc.message + "\n"), "other", False
        if request is None:
            return text_response(408, "request not received in time\n"), "other", False
        path = request.path if request.path in self.routes else "other"
        return await self.dispatch(request), path, request.method == "HEAD"

    async def dispatch(self, request: Request) -> Response:
        """The response to a parsed request; never raises (a failing handler answers 500)."""
        if request.method not in ALLOWED_METHODS:
            return text_response(
                405, "this port is read-only: GET or HEAD\n", ("Allow", ", ".join(ALLOWED_METHODS))
            )
        route = self.routes.get(request.path)
        if route is None:
            return text_response(404, "not found: try /healthz, /readyz, /metrics or /status\n")
        try:
            return await route()
        except Exception:
            log.exception("http_handler_failed", path=request.path)
            return text_response(500, "internal error (see the keeper's log)\n")

    async def _send(
        self,
        stream: anyio.abc.ByteStream,
        response: Response,
        path: str,
        *,
        head_only: bool = False,
    ) -> None:
        metrics.HTTP_REQUESTS.labels(path=path, code=str(response.status)).inc()
        with anyio.move_on_after(WRITE_TIMEOUT):
            await stream.send(encode_response(response, head_only=head_only))

    async def _linger(self, stream: anyio.abc.ByteStream) -> None:
        """Half-close, then drain (and drop) at most MAX_HEAD more bytes for LINGER seconds:
        closing with unread bytes would reset the connection, and the client could lose the
        answer before reading it."""
        await stream.send_eof()
        drained = 0
        with anyio.move_on_after(LINGER):
            while drained < MAX_HEAD:
                try:
                    drained += len(await stream.receive(MAX_HEAD - drained))
                except anyio.EndOfStream:
                    return

    # ------------------------------------------------------------------ endpoints

    async def healthz(self) -> Response:
        """Alive: the event loop runs."""
        return text_response(200, "ok\n")

    async def readyz(self) -> Response:
        """Ready to be the keeper of the chain (see the module docstring)."""
        body = await self.readiness()
        return json_response(200 if body["ready"] else 503, body)

    async def readiness(self) -> dict[str, Any]:
        """`{"ready", "role", "checks": {name: {"ok", ...}}}` plus `reason` when not ready."""
        checks: dict[str, dict[str, Any]] = {}

        async def index() -> None:
            checks.update(await self._check_index())

        async def rpc() -> None:
            checks["rpc"] = await self.rpc_probe.get()

        async with anyio.create_task_group() as tg:
            tg.start_soon(index)
            tg.start_soon(rpc)
        role = self.state.role
        checks["leader"] = {"ok": role == "leader", "role": role}

        reasons = [] if role == "leader" else [role]
        for name in ("database", "rpc", "backfill", "lag"):
            check = checks[name]
            if not check["ok"] and not check.get("unknown"):
                reasons.append(check["detail"])
        body: dict[str, Any] = {
            "ready": not reasons,
            "role": role,
            "checks": {
                name: checks[name] for name in ("database", "rpc", "backfill", "lag", "leader")
            },
        }
        if reasons:
            body["reason"] = "; ".join(reasons)
        return body

    async def _check_index(self) -> dict[str, dict[str, Any]]:
        """The database, backfill and lag checks, from one read of keeper.indexer_status."""
        unknown = {"ok": False, "unknown": True, "detail": "unknown: database unreachable"}
        pool = self.state.pool
        if pool is None:
            failed = {"ok": False, "detail": "database not connected yet"}
            return {"database": failed, "backfill": unknown, "lag": unknown}
        try:
            with anyio.fail_after(DB_TIMEOUT):
                async with self.db_slots, pool.acquire() as conn, conn.transaction(readonly=True):
                    row = await conn.fetchrow(self.q["readiness"], self.state.chain_id)
        except _DB_ERRORS as exc:
            failed = {"ok": False, "detail": f"database unreachable ({_error_name(exc)})"}
            return {"database": failed, "backfill": unknown, "lag": unknown}

        database = {"ok": True}
        if row is None:
            nothing = {"ok": False, "detail": "backfill not started (nothing indexed yet)"}
            no_lag = {"ok": False, "unknown": True, "detail": "unknown: nothing indexed yet"}
            return {"database": database, "backfill": nothing, "lag": no_lag}
        backfill: dict[str, Any] = {"ok": bool(row["backfill_done"])}
        if not backfill["ok"]:
            backfill["detail"] = "backfill not done"
        lag_seconds = row["lag_seconds"]
        limit = self.state.max_lag_seconds
        lag: dict[str, Any] = {"ok": lag_seconds is not None and lag_seconds <= limit}
        lag["lag_seconds"] = None if lag_seconds is None else int(lag_seconds)
        lag["max_lag_seconds"] = limit
        if lag_seconds is None:
            lag["detail"] = "lag unknown (no head observed yet)"
        elif not lag["ok"]:
            lag["detail"] = f"lag {int(lag_seconds)} s over {limit:g} s"
        return {"database": database, "backfill": backfill, "lag": lag}

    async def _probe_rpc(self) -> dict[str, Any]:
        client = self.state.client
        if client is None:
            return {"ok": False, "detail": "rpc not connected yet"}
        try:
            with anyio.fail_after(RPC_TIMEOUT):
                head = int(await client.request("eth_blockNumber"), 16)
        # Whatever the client raises, only its type is shown: messages of transport errors
        # can carry the RPC URL, and hosted RPC URLs carry API keys.
        except Exception as exc:
            return {"ok": False, "detail": f"rpc unreachable ({_error_name(exc)})"}
        return {"ok": True, "head_block": head}

    async def metrics(self) -> Response:
        """The Prometheus exposition, database gauges refreshed first."""
        try:
            await self.gauges.get()
        # A bug in the refresh must not take the process's own metrics down with it.
        except Exception:
            metrics.METRICS_REFRESH_ERRORS.inc()
            log.exception("metrics_refresh_failed")
        return Response(200, generate_latest(metrics.REGISTRY), CONTENT_TYPE_LATEST)

    async def _refresh_gauges(self) -> dict[str, Any]:
        pool = self.state.pool
        if pool is None:
            return {"ok": False}
        chain_id = self.state.chain_id
        try:
            with anyio.fail_after(DB_TIMEOUT):
                async with self.db_slots, pool.acquire() as conn, conn.transaction(readonly=True):
                    row = await conn.fetchrow(self.q["metrics_gauges"], chain_id)
                    intents = await conn.fetch(self.q["metrics_intents"], chain_id)
        except _DB_ERRORS as exc:
            metrics.METRICS_REFRESH_ERRORS.inc()
            log.warning("metrics_refresh_failed", error=_error_name(exc))
            return {"ok": False}
        assert row is not None  # one row always (left joins)
        # The leader's indexer sets these as it goes; elsewhere the database is the source.
        if self.state.role != "leader":
            for gauge, column in (
                (metrics.HEAD_BLOCK, "head_block"),
                (metrics.INDEXED_BLOCK, "indexed_block"),
                (metrics.FINALIZED_BLOCK, "finalized_block"),
                (metrics.LAG_SECONDS, "lag_seconds"),
                (metrics.INDEXED_TIMESTAMP, "indexed_timestamp"),
            ):
                if row[column] is not None:
                    gauge.set(row[column])
        for kind, column in (
            ("settle", "settle_due"),
            ("refund", "refund_due"),
            ("usage", "usage_pending"),
            ("usage_received", "usage_received"),
        ):
            metrics.PENDING_WORK.labels(kind=kind).set(row[column])
        for gauge, column in (
            (metrics.SETTLED_24H, "settled_amount"),
            (metrics.USAGE_CHARGED_24H, "usage_charged"),
            (metrics.REFUNDED_24H, "refunded_amount"),
        ):
            if row[column] is not None:
                gauge.set(float(row[column]))  # the exposition's only type; see metrics.py
        counts = {(r["kind"], r["state"]): int(r["n"]) for r in intents}
        for kind in INTENT_KINDS:
            for state in OPEN_STATES:
                metrics.INTENTS_OPEN.labels(kind=kind, state=state).set(
                    counts.get((kind, state), 0)
                )
        return {"ok": True}

    async def status(self) -> Response:
        """`keeper status` as JSON, with this process."""
        process = {
            "role": self.state.role,
            "pid": os.getpid(),
            "uptime_seconds": round(time.time() - self.state.started_at, 1),
            "last_error": self.state.last_error,
        }
        pool = self.state.pool
        if pool is None:
            return json_response(503, {"error": "database not connected yet", "process": process})
        try:
            with anyio.fail_after(STATUS_TIMEOUT):
                async with self.db_slots, pool.acquire() as conn:
                    status = await collect_status(conn, self.state.chain_id)
        except _DB_ERRORS as exc:
            error = f"database unreachable ({_error_name(exc)})"
            return json_response(503, {"error": error, "process": process})
        return json_response(200, {**status, "process": process})


def _error_name(exc: BaseException) -> str:
    return "timeout" if isinstance(exc, TimeoutError) else type(exc).__name__


async def serve(
    host: str,
    port: int,
    state: HealthState,
    *,
    read_timeout: float = READ_TIMEOUT,
    max_connections: int = MAX_CONNECTIONS,
    task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled; task_status.started(bound_port) once listening (port 0 = any free
    port)."""
    server = HealthServer(state, read_timeout=read_timeout, max_connections=max_connections)
    listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
    async with listener:
        # (anyio's typed socket attributes, not Django's QuerySet.extra)
        bound: int = listener.extra(SocketAttribute.local_port)  # noqa: S610
        log.debug("http_listening", host=host, port=bound)
        async with anyio.create_task_group() as tg:
            for sub in listener.listeners:
                assert isinstance(sub, anyio.abc.SocketListener)  # create_tcp_listener's kind
                tg.start_soon(_accept, sub, server, tg)
            task_status.started(bound)


async def _accept(
    listener: anyio.abc.SocketListener,
    server: HealthServer,
    tg: anyio.abc.TaskGroup,
) -> None:
    while True:
        try:
            stream = await listener.accept()
        # Out of file descriptors and the like: wait and go on; the port must not die of it.
        except OSError as exc:
            log.warning("http_accept_failed", error=_error_name(exc))
            await anyio.sleep(ACCEPT_BACKOFF)
            continue
        tg.start_soon(server.handle, stream)
