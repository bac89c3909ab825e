"""The read-only health and metrics port: /healthz, /readyz, /metrics and /status.

Served by `aiohttp.web` behind a strict gate (keeper.service.request_gate): one request per
connection (the answer says `Connection: close`), origin-form GET and HEAD only, the request
line and headers read within `MAX_HEAD` bytes and `read_timeout` seconds, a request body never
read, and at most `max_connections` connections at once (the next ones get 503). Nothing a
request can say changes any state: every handler only reads, and the database is read in
read-only transactions. A failing handler answers 500 and the server goes on. Every body goes
through `keeper.secrets.scrub`: /status carries error texts from the RPC and the database,
which may quote a secret.

- `/healthz`: 200 `ok` while the event loop runs; no I/O.
- `/readyz`: readiness by role. The leader is ready (200) when the database and the RPC answer,
  the backfill is done and the index lags the head by at most `max_lag_seconds` of chain time; a
  standby when the database and the RPC answer (it is ready to take over: the index is the
  leader's business, its checks are shown but not counted); a process starting or stopping
  never. Else 503 with a `reason` naming each failing check. A ready leader that runs with a
  part switched off (usage billing, for want of ORACLE_ROLE) stays 200 and names it under
  `degraded`. The RPC answer is cached for `PROBE_TTL`, so a burst of probes is one RPC call.
  Each answer, and each scrape, sets `keeper_ready`.
- `/metrics`: the Prometheus registry, with the metrics read from the database refreshed first
  (keeper.service.scrape).
- `/status`: `keeper.service.status.collect_status` of the chain plus this process (role, pid,
  uptime).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
import asyncpg
import structlog
from aiohttp import hdrs, web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from keeper import metrics, ports, secrets
from keeper.chain.rpc import ChainClient
from keeper.db.queries import load_queries
from keeper.service.request_gate import (
    COMMON_HEADERS,
    LINGER,
    Gates,
    Response,
    encode_response,
    json_response,
    text_response,
)
from keeper.service.scrape import (
    DB_ERRORS,
    DB_TIMEOUT,
    PROBE_TTL,
    Cached,
    DatabaseCollector,
    error_name,
)
from keeper.service.status import collect_status

# encode_response: the answers' scrubbing is tested through this module (tests/unit/test_secrets).
__all__ = ["HealthState", "Response", "encode_response", "json_response", "serve"]

log = structlog.get_logger(__name__)

READ_TIMEOUT = 5.0  # seconds for the whole request head
WRITE_TIMEOUT = 5.0
MAX_CONNECTIONS = 32
RPC_TIMEOUT = 2.0
STATUS_TIMEOUT = 10.0
# From a complete head to the connection's end: the slowest handler, then the client reading.
ANSWER_TIMEOUT = STATUS_TIMEOUT + WRITE_TIMEOUT
DB_CONCURRENCY = 2  # connections the port may borrow from the daemon's pool at once
ALLOWED_METHODS = ("GET", "HEAD")
QUERY_FILE = "status.sql"

Endpoint = Callable[[], Awaitable[Response]]
# The checks each role's readiness counts (see the module docstring); other roles are never
# ready (and their answer names every failing check).
ALL_CHECKS = ("database", "rpc", "backfill", "lag")
ROLE_CHECKS: dict[str, tuple[str, ...]] = {
    "leader": ALL_CHECKS,
    "standby": ("database", "rpc"),
}


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
    # The leader's usage billing, once decided: {"enabled", "reason", "signers_without_role"};
    # None on a standby, without signers, or with plan.usage = false.
    usage_billing: dict[str, Any] | None = None
    started_at: float = field(default_factory=time.time)


def to_web(response: Response) -> web.Response:
    """The aiohttp answer of a `Response`: scrubbed body, the port's headers, then close."""
    answer = web.Response(
        status=response.status,
        body=secrets.scrub_bytes(response.body),
        headers={hdrs.CONTENT_TYPE: response.content_type, **dict(COMMON_HEADERS)},
    )
    for name, value in response.headers:
        answer.headers[name] = value
    answer.force_close()
    return answer


class HealthServer:
    """The routes and endpoints of the health port (`serve` runs them)."""

    def __init__(self, state: HealthState) -> None:
        self.state = state
        self.db_slots = anyio.CapacityLimiter(DB_CONCURRENCY)
        self.rpc_probe = Cached(self._probe_rpc, PROBE_TTL)
        self.collector = DatabaseCollector(state, load_queries(QUERY_FILE), self.db_slots)
        self.routes: dict[str, Endpoint] = {
            "/healthz": self.healthz,
            "/readyz": self.readyz,
            "/metrics": self.metrics,
            "/status": self.status,
        }

    def app(self) -> web.Application:
        """The aiohttp application: a GET (and HEAD) route per endpoint, behind `guard`."""
        app = web.Application(middlewares=[self.guard])
        for path, endpoint in self.routes.items():
            app.router.add_get(path, _route(endpoint))
        app.on_response_prepare.append(_drop_server_header)
        return app

    @web.middleware
    async def guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """405 for any method but GET and HEAD (on any path), 404 unless the path as sent is a
        route (aiohttp routes the decoded path: `/%68ealthz` is no route here), 500 for a
        failing handler; each answer counted by path and status."""
        path = request.raw_path.partition("?")[0]
        routed = path in self.routes and path == request.path
        answer: web.StreamResponse
        if request.method not in ALLOWED_METHODS:
            answer = to_web(
                text_response(
                    405,
                    "this port is read-only: GET or HEAD\n",
                    ("Allow", ", ".join(ALLOWED_METHODS)),
                )
            )
        elif not routed:
            answer = to_web(
                text_response(404, "not found: try /healthz, /readyz, /metrics or /status\n")
            )
        else:
            try:
                answer = await handler(request)
            except Exception:
                log.exception("http_handler_failed", path=path)
                answer = to_web(text_response(500, "internal error (see the keeper's log)\n"))
        label = path if routed else "other"
        metrics.HTTP_REQUESTS.labels(path=label, code=str(answer.status)).inc()
        return answer

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
        counted = ROLE_CHECKS.get(role, ALL_CHECKS)
        checks["role"] = {"ok": role in ROLE_CHECKS, "role": role}

        reasons = [] if role in ROLE_CHECKS else [role]
        for name in counted:
            check = checks[name]
            if not check["ok"] and not check.get("unknown"):
                reasons.append(check["detail"])
        body: dict[str, Any] = {
            "ready": not reasons,
            "role": role,
            "checks": {
                name: {**checks[name], "counted": name in counted or name == "role"}
                for name in (*ALL_CHECKS, "role")
            },
        }
        if reasons:
            body["reason"] = "; ".join(reasons)
        degraded = self.degraded()
        if degraded:
            body["degraded"] = degraded
        metrics.READY.set(1 if body["ready"] else 0)
        return body

    def degraded(self) -> list[str]:
        """What the leader runs without (it is still ready: the rest of its work goes on)."""
        billing = self.state.usage_billing
        if billing is None or billing["enabled"]:
            return []
        signers = ", ".join(billing["signers_without_role"])
        return [f"usage billing disabled: {billing['reason']} ({signers})"]

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
                    row = await conn.fetchrow(self.collector.q["readiness"], self.state.chain_id)
        except DB_ERRORS as exc:
            failed = {"ok": False, "detail": f"database unreachable ({error_name(exc)})"}
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
            return {"ok": False, "detail": f"rpc unreachable ({error_name(exc)})"}
        return {"ok": True, "head_block": head}

    async def metrics(self) -> Response:
        """The Prometheus exposition, the database's metrics and `keeper_ready` refreshed
        first."""
        await self.readiness()
        await self.collector.refresh()
        return Response(200, generate_latest(metrics.REGISTRY), CONTENT_TYPE_LATEST)

    async def status(self) -> Response:
        """`keeper status` as JSON, with this process."""
        process = {
            "role": self.state.role,
            "pid": os.getpid(),
            "uptime_seconds": round(time.time() - self.state.started_at, 1),
            "last_error": self.state.last_error,
            "usage_billing": self.state.usage_billing,
            "degraded": self.degraded(),
        }
        if self.state.client is not None:
            process["providers"] = self.state.client.snapshot()
        pool = self.state.pool
        if pool is None:
            return json_response(503, {"error": "database not connected yet", "process": process})
        try:
            with anyio.fail_after(STATUS_TIMEOUT):
                async with self.db_slots, pool.acquire() as conn:
                    status = await collect_status(conn, self.state.chain_id)
        except DB_ERRORS as exc:
            error = f"database unreachable ({error_name(exc)})"
            return json_response(503, {"error": error, "process": process})
        return json_response(200, {**status, "process": process})


def _route(endpoint: Endpoint) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        return to_web(await endpoint())

    return handle


async def _drop_server_header(request: web.Request, response: web.StreamResponse) -> None:
    """No `Server` banner with aiohttp's version: the port never told it."""
    response.headers.popall(hdrs.SERVER, None)


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
    port). Runs on the asyncio backend of anyio (aiohttp's). A port that cannot be bound
    raises `keeper.ports.PortUnavailable` before anything is set up."""
    sockets = ports.listen(host, port)
    server = HealthServer(state)
    # lingering_time: after answering a request whose body was not read, aiohttp drains it for
    # LINGER seconds before closing, as the gate does after a refusal. shutdown_timeout 0: on
    # cancellation, answers in flight are dropped at once, like the rest of the daemon's tasks.
    runner = web.AppRunner(
        server.app(),
        handle_signals=False,
        access_log=None,
        lingering_time=LINGER,
        shutdown_timeout=0,
    )
    await runner.setup()
    assert runner.server is not None  # set by setup()
    gates = Gates(runner.server, read_timeout, ANSWER_TIMEOUT, max_connections)
    metrics.REGISTRY.register(server.collector)
    listeners: list[asyncio.Server] = []
    try:
        loop = asyncio.get_running_loop()
        for sock in sockets:
            listeners.append(await loop.create_server(gates, sock=sock))
        bound: int = sockets[0].getsockname()[1]
        log.debug("http_listening", host=host, port=bound)
        task_status.started(bound)
        await anyio.sleep_forever()
    finally:
        with anyio.CancelScope(shield=True):
            for listener in listeners:
                listener.close()
            for sock in sockets[len(listeners) :]:
                sock.close()
            gates.abort_all()
            await runner.cleanup()
            metrics.REGISTRY.unregister(server.collector)
