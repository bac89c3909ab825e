"""The health port against a real PostgreSQL and a real anvil: readiness following the role,
the index, a dead database and a dead RPC; /metrics and /status from the database; write
methods and malformed requests refused with nothing changed."""

from __future__ import annotations

import re
import socket
from collections.abc import Awaitable, Callable

import anyio
import asyncpg
import pytest
from structlog.testing import capture_logs

from keeper import db as keeper_db
from keeper import metrics
from keeper.chain.rpc import ChainClient
from keeper.service.health import HealthState
from keeper.service.leader import identity, leader_lock_key
from keeper.service.status import AmbiguousChain, NoChain, collect_status, render_status
from tests.support.http import Reply, exchange, parse_reply, request, serving
from tests.support.ingest import Target, index_until_caught_up, open_indexer
from tests.support.tx import Env

pytestmark = pytest.mark.anyio

# What the issue asks /metrics to show (a counter by its `_total` name, a histogram by its
# base name): the registry as the daemon process has it.
REQUIRED_METRICS = (
    "keeper_head_block",
    "keeper_indexed_block",
    "keeper_finalized_block",
    "keeper_index_lag_seconds",
    "keeper_events_indexed_total",
    "keeper_reorgs_total",
    "keeper_reorg_depth_blocks",
    "keeper_rpc_requests_total",
    "keeper_rpc_errors_total",
    "keeper_rpc_latency_seconds",
    "keeper_db_latency_seconds",
    "keeper_intents",
    "keeper_tx_intents_total",
    "keeper_tx_attempts_total",
    "keeper_tx_gas_spent_wei_total",
    "keeper_settled_amount_24h",
    "keeper_usage_charged_24h",
    "keeper_refunded_amount_24h",
    "keeper_signer_balance_wei",
    "keeper_signer_next_nonce",
    "keeper_plan_pass_seconds",
    "keeper_leader",
    "keeper_pending_work",
)
_SAFE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def free_port() -> int:
    """A port nothing listens on (bound once by the OS, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def state_of(env: Env, role: str = "leader") -> HealthState:
    return HealthState(
        chain_id=env.deployment.chain_id, role=role, pool=env.pool, client=env.manager.client
    )


async def index(env: Env, database_url: str) -> None:
    d = env.deployment
    target = Target(
        chain_id=d.chain_id,
        addresses={"StreamManager": d.stream_manager, "EscrowVault": d.escrow_vault},
        start_block=d.deployment_block,
    )
    async with open_indexer(env.node.url, database_url, target) as indexer:
        await index_until_caught_up(indexer)


async def eventually(probe: Callable[[], Awaitable[Reply]], ok: Callable[[Reply], bool]) -> Reply:
    """Ask again until `ok` (the RPC answer is cached for a second)."""
    for _ in range(100):
        reply = await probe()
        if ok(reply):
            return reply
        await anyio.sleep(0.05)
    raise AssertionError(f"never got the expected answer; last: {reply}")


def exposed_names(text: str) -> set[str]:
    """Metric names in an exposition: HELP/TYPE lines (listed even for labelled metrics with
    no child yet) and sample lines."""
    names = set()
    for line in text.splitlines():
        if line.startswith(("# HELP ", "# TYPE ")):
            names.add(line.split()[2])
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


async def snapshot(pool: asyncpg.Pool) -> dict[str, tuple[int, str]]:
    """Every table of the keeper's schema: (row count, digest of all its rows)."""
    async with pool.acquire() as conn:
        tables = await conn.fetch(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') ORDER BY 1"
        )
        out = {}
        for row in tables:
            name = row["relname"]
            assert _SAFE_NAME.match(name), name
            digest = await conn.fetchrow(
                f"SELECT count(*) AS n, md5(COALESCE(string_agg(t::text, chr(10) "  # noqa: S608 - a catalog name, checked
                f"ORDER BY t::text), '')) AS md5 FROM \"{name}\" t"
            )
            assert digest is not None
            out[name] = (int(digest["n"]), str(digest["md5"]))
        out["sequences"] = (
            0,
            str(
                await conn.fetchval(
                    "SELECT string_agg(schemaname || '.' || sequencename || '=' || "
                    "COALESCE(last_value, 0)::text, ',' ORDER BY 1) FROM pg_sequences"
                )
            ),
        )
    return out


# ---------------------------------------------------------------------- readiness


async def test_readiness_by_role(env: Env, database_url: str) -> None:
    """A standby is ready when it could take over (database and RPC answer), whatever the
    index; the leader only once caught up; a process starting or stopping never."""
    state = state_of(env, role="starting")
    async with serving(state) as port:
        alive = await request(port, "GET", "/healthz")
        assert (alive.status, alive.body) == (200, b"ok\n")

        before = await request(port, "GET", "/readyz")
        assert before.status == 503
        body = before.json()
        assert body["reason"] == "starting; backfill not started (nothing indexed yet)"
        assert body["checks"]["database"] == {"ok": True, "counted": True}
        assert body["checks"]["rpc"]["ok"] is True

        state.role = "standby"
        standby = await request(port, "GET", "/readyz")
        assert standby.status == 200
        body = standby.json()
        assert (body["ready"], body["role"]) == (True, "standby") and "reason" not in body
        assert body["checks"]["role"] == {"ok": True, "role": "standby", "counted": True}
        # The index is the leader's business: shown, not counted.
        assert body["checks"]["backfill"]["ok"] is False
        assert body["checks"]["backfill"]["counted"] is False
        scraped = (await request(port, "GET", "/metrics")).body.decode()
        assert re.search(r"^keeper_ready 1\.0$", scraped, re.M)

        state.role = "leader"
        leader_behind = await request(port, "GET", "/readyz")
        assert leader_behind.status == 503
        assert leader_behind.json()["reason"] == "backfill not started (nothing indexed yet)"
        scraped = (await request(port, "GET", "/metrics")).body.decode()
        assert re.search(r"^keeper_ready 0\.0$", scraped, re.M)

        await index(env, database_url)
        ready = await request(port, "GET", "/readyz")
        assert ready.status == 200
        body = ready.json()
        assert body["ready"] is True and body["role"] == "leader" and "reason" not in body
        assert all(check["ok"] for check in body["checks"].values())
        assert body["checks"]["lag"]["lag_seconds"] == 0
        head = env.w3.eth.block_number
        assert body["checks"]["rpc"]["head_block"] == head

        # The index falls behind the head by more than max_lag_seconds of chain time.
        async with env.pool.acquire() as conn:
            await conn.execute("UPDATE ingest_cursor SET head_timestamp = indexed_timestamp + 1000")
        lagging = await request(port, "GET", "/readyz")
        assert lagging.status == 503
        assert lagging.json()["reason"] == "lag 1000 s over 120 s"

        state.role = "stopping"
        stopping = (await request(port, "GET", "/readyz")).json()
        assert stopping["reason"] == "stopping; lag 1000 s over 120 s"


async def test_readiness_names_a_dead_database_and_a_dead_rpc(env: Env) -> None:
    secret = "k3y-in-the-path"
    dead_client = ChainClient(f"http://127.0.0.1:{free_port()}/v2/{secret}")
    dead_pool = await keeper_db.create_pool(
        f"postgresql://keeper:pa55word@127.0.0.1:{free_port()}/keeper", min_size=0, max_size=2
    )
    try:
        state = HealthState(
            chain_id=env.deployment.chain_id, role="leader", pool=dead_pool, client=dead_client
        )
        with capture_logs() as logs:
            async with serving(state) as port:
                both = await request(port, "GET", "/readyz")
                assert both.status == 503
                reason = both.json()["reason"]
                assert reason.startswith("database unreachable (")
                assert "rpc unreachable (" in reason
                assert "backfill" not in reason  # unknown while the database is down

                # The database comes back; the RPC is still dead.
                state.pool = env.pool
                rpc_only = await eventually(
                    lambda: request(port, "GET", "/readyz"),
                    lambda r: r.json()["checks"]["database"]["ok"],
                )
                assert rpc_only.json()["reason"].startswith("rpc unreachable (")

                # Then the RPC is back and the database gone.
                state.pool, state.client = dead_pool, env.manager.client
                db_only = await eventually(
                    lambda: request(port, "GET", "/readyz"),
                    lambda r: r.json()["checks"]["rpc"]["ok"],
                )
                assert db_only.json()["reason"].startswith("database unreachable (")
                assert "rpc" not in db_only.json()["reason"]

                status = await request(port, "GET", "/status")
                assert status.status == 503
                assert status.json()["error"].startswith("database unreachable (")

                # /metrics still serves the process's own metrics.
                scraped = await request(port, "GET", "/metrics")
                assert scraped.status == 200
                assert "keeper_rpc_requests_total" in exposed_names(scraped.body.decode())
                assert re.search(rb"^keeper_metrics_refresh_errors_total [1-9]", scraped.body, re.M)
                answers = [both, rpc_only, db_only, status, scraped]
        # Neither the RPC URL's key nor the database password is shown or logged.
        for text in [a.body.decode() for a in answers] + [repr(e) for e in logs]:
            assert secret not in text and "pa55word" not in text
    finally:
        await dead_pool.close()
        await dead_client.close()


# ---------------------------------------------------------------------- metrics and status


async def test_metrics_show_every_required_name_and_the_database_gauges(
    env: Env, database_url: str
) -> None:
    import keeper.service.daemon  # noqa: F401 - registers the daemon's metrics, as in the real process

    await index(env, database_url)
    await env.plan("settle-1", [1])
    await env.plan("settle-2", [2])
    state = state_of(env, role="standby")
    async with serving(state) as port:
        scraped = await request(port, "GET", "/metrics")
        assert scraped.status == 200
        text = scraped.body.decode()
        missing = [n for n in REQUIRED_METRICS if n not in exposed_names(text)]
        assert missing == []
        assert 'keeper_intents{kind="settle",state="planned"} 2.0' in text
        assert 'keeper_intents{kind="refund",state="assigned"} 0.0' in text
        assert 'keeper_pending_work{kind="settle"} 0.0' in text
        assert "keeper_settled_amount_24h 0.0" in text
        # A standby's index gauges come from the database (the leader's indexer sets its own).
        async with env.pool.acquire() as conn:
            indexed = await conn.fetchval(
                "SELECT indexed_block FROM keeper.indexer_status WHERE chain_id = $1",
                env.deployment.chain_id,
            )
        assert f"keeper_indexed_block {float(indexed)}" in text
        head = await request(port, "HEAD", "/metrics")
        assert head.status == 200 and head.body == b""
        assert int(head.headers["content-length"]) > 0


async def test_status_agrees_with_the_views_and_names_the_leader(
    env: Env, database_url: str
) -> None:
    chain_id = env.deployment.chain_id
    await index(env, database_url)
    await env.plan("settle-1", [1])
    await env.manager.tick()  # assigns it and records the signers
    state = state_of(env)
    state.last_error = "rpc_unavailable: eth_getLogs"
    async with serving(state) as port:
        reply = await request(port, "GET", "/status")
        assert reply.status == 200
        status = reply.json()
        async with env.pool.acquire() as conn:
            view = await conn.fetchrow(
                "SELECT * FROM keeper.indexer_status WHERE chain_id = $1", chain_id
            )
            signers = await conn.fetch(
                "SELECT * FROM keeper.signers WHERE chain_id = $1 ORDER BY address", chain_id
            )
            intents = await conn.fetch(
                "SELECT kind, state FROM keeper.tx_pipeline WHERE chain_id = $1", chain_id
            )
        assert view is not None
        assert status["chain"]["id"] == chain_id
        for column in (
            "head_block",
            "indexed_block",
            "finalized_block",
            "lag_blocks",
            "lag_seconds",
            "backfill_done",
        ):
            assert status["index"][column] == view[column], column
        assert status["index"]["backfill_done"] is True
        assert [(s["address"], s["balance"], s["next_nonce"]) for s in status["signers"]] == [
            (s["address"], str(int(s["balance"])), s["next_nonce"]) for s in signers
        ]
        # Automine is on: the intent is assigned and already mined.
        assert [(r["kind"], r["state"]) for r in intents] == [("settle", "mined")]
        assert status["pending"]["intents"] == {"settle": {"mined": 1}}
        assert status["process"]["role"] == "leader"
        assert status["process"]["last_error"] == "rpc_unavailable: eth_getLogs"
        assert status["leader"] is None  # nobody holds the lock

        # A keeper takes the leader lock on a session named as keeper.service.leader names it.
        holder = await keeper_db.connect(
            database_url, server_settings={"application_name": identity()}
        )
        try:
            await holder.execute("SELECT pg_advisory_lock($1)", leader_lock_key(chain_id))
            led = (await request(port, "GET", "/status")).json()
            assert led["leader"]["application_name"] == identity()
            assert led["leader"]["backend_pid"] == holder.get_server_pid()
        finally:
            await holder.close()
        screen = render_status(led)
        assert f"chain       {chain_id}" in screen
        assert f"leader      {identity()}" in screen
        assert f"indexed {view['indexed_block']:,}" in screen
        assert "intents     settle mined 1" in screen
        assert "loop error  rpc_unavailable: eth_getLogs" in screen


async def put_cursor(db: asyncpg.Connection, chain_id: int, name: str) -> None:
    await db.execute("INSERT INTO chains (chain_id, name) VALUES ($1, $2)", chain_id, name)
    await db.execute(
        "INSERT INTO ingest_cursor (chain_id, start_block, indexed_block, indexed_timestamp, "
        "head_block, head_timestamp, finalized_block) VALUES ($1, 0, 10, 1000, 12, 1024, 0)",
        chain_id,
    )


async def test_status_picks_the_only_chain_or_asks_for_one(db: asyncpg.Connection) -> None:
    with pytest.raises(NoChain):
        await collect_status(db)
    assert (await collect_status(db, 31337))["index"] is None
    await put_cursor(db, 31337, "anvil")
    only = await collect_status(db)
    assert only["chain"] == {"id": 31337, "name": "anvil"}
    assert only["index"]["lag_blocks"] == 2 and only["index"]["lag_seconds"] == 24
    assert only["leader"] is None and only["last_error"] is None and only["signers"] == []
    assert only["last_24h"]["settled_amount"] == "0"
    assert "blocks      head 12, indexed 10, finalized 0" in render_status(only)
    await put_cursor(db, 8453, "base")
    with pytest.raises(AmbiguousChain) as err:
        await collect_status(db)
    assert err.value.chain_ids == [8453, 31337]
    assert "--chain-id" in str(err.value)
    assert (await collect_status(db, 8453))["chain"]["name"] == "base"


async def test_status_reads_as_the_read_only_role(db: asyncpg.Connection) -> None:
    await put_cursor(db, 31337, "anvil")
    await db.execute("SET ROLE keeper_reader")
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await db.fetchval("SELECT count(*) FROM intents")  # the role reads views only
    status = await collect_status(db)
    assert status["chain"] == {"id": 31337, "name": "anvil"}
    assert status["index"]["indexed_block"] == 10


# ---------------------------------------------------------------------- nothing changes


async def test_write_methods_are_refused_and_change_nothing(env: Env, database_url: str) -> None:
    await index(env, database_url)
    await env.plan("settle-1", [1])
    await env.manager.tick()
    state = state_of(env)
    before = await snapshot(env.pool)
    assert before["intents"][0] == 1 and before["attempts"][0] == 1
    async with serving(state) as port:
        for path in ("/healthz", "/readyz", "/metrics", "/status", "/", "/intents"):
            for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"):
                reply = await request(
                    port,
                    method,
                    path,
                    body=b'{"role": "standby", "state": "failed"}',
                    headers={"Content-Type": "application/json"},
                )
                assert reply.status == 405, (method, path)
                assert reply.headers["allow"] == "GET, HEAD"
        for path in ("/healthz", "/readyz", "/metrics", "/status"):
            for method in ("GET", "HEAD"):
                assert (await request(port, method, path)).status == 200, (method, path)
    assert await snapshot(env.pool) == before
    assert (state.role, state.last_error, state.max_lag_seconds) == ("leader", None, 120.0)


async def test_malformed_requests_are_refused_and_the_server_keeps_serving(
    env: Env, database_url: str
) -> None:
    await index(env, database_url)
    state = state_of(env)
    before = await snapshot(env.pool)
    cases: list[tuple[bytes, set[int | None]]] = [
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\xff\xfe\r\n\r\n", {400}),
        (bytes(range(256)) * 40, {431}),  # 10 KiB without a blank line
        (b"GET /healthz\r\nHost: x\r\n\r\n", {400}),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", {431}),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nNoColonHere\r\n\r\n", {400}),
        (b"GET http://127.0.0.1/healthz HTTP/1.1\r\nHost: x\r\n\r\n", {400}),
        (b"GET /../status HTTP/1.1\r\nHost: x\r\n\r\n", {404}),
        (b"GET /healthz/../status HTTP/1.1\r\nHost: x\r\n\r\n", {404}),
        (b"GET /%2e%2e/status HTTP/1.1\r\nHost: x\r\n\r\n", {404}),
        (b"GET /healthz HTTP/1.1\r\n\r\n", {400}),
        (b"GET /healthz HTTP/3.0\r\nHost: x\r\n\r\n", {505}),
        (b"POST /status HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\nrole=x", {405}),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\n", {408}),  # never finishes its head
        (b"GE", {408}),
        (b"", {408}),  # connects and says nothing
    ]
    async with serving(state, read_timeout=0.5) as port:
        for payload, expected in cases:
            raw = await exchange(port, payload)
            status = parse_reply(raw).status if raw else None
            assert status in expected, (payload[:60], status, raw[:200])
        # A client that connects and hangs up at once, and one that sends a head and leaves.
        await exchange(port, b"", then_wait=False)
        await exchange(port, b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n", then_wait=False)
        assert (await request(port, "GET", "/healthz")).status == 200
        assert (await request(port, "GET", "/readyz")).status == 200
        assert (await request(port, "GET", "/status")).status == 200
    assert await snapshot(env.pool) == before


async def test_the_rpc_probe_is_shared_by_a_burst_of_readiness_checks(env: Env) -> None:
    def block_number_calls() -> float:
        value = metrics.REGISTRY.get_sample_value(
            "keeper_rpc_requests_total", {"method": "eth_blockNumber"}
        )
        return value or 0.0

    before = block_number_calls()
    async with serving(state_of(env)) as port, anyio.create_task_group() as tg:
        for _ in range(20):
            tg.start_soon(request, port, "GET", "/readyz")
    # One probe answers the burst (a second one only if the burst outlived the cache).
    assert 1 <= block_number_calls() - before < 20
