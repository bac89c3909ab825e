"""Usage billed per endpoint against a real chain, index and outbox (StreamManager v2): rows
naming their payee's endpoints are recorded with the endpoint and price the contract charged,
rows it cannot bill are kept with their reason, and the usage of a stream in a notice window
(closing, or its price about to change) goes out above the base-fee ceiling before the
deadline, at the old terms."""

from __future__ import annotations

from typing import Any

import pytest

from keeper.chain.deployment import Deployment
from keeper.chain.oracle_role import ORACLE_ROLE
from keeper.dev.anvil import rpc
from keeper.ops.deploy import contract, deploy_all
from keeper.plan.planner import Planner
from tests.support.chain import DEV_KEY0
from tests.support.ingest import Target, index_until_caught_up, open_indexer
from tests.support.tx import Env, item_outcomes
from tests.support.usage import SETTINGS, send, statuses

pytestmark = pytest.mark.anyio

NOTICE = 600


def name32(name: str) -> bytes:
    return name.encode().ljust(32, b"\x00")


def world(env: Env, d: Deployment) -> tuple[Any, str, str]:
    """Payee A lists chat (3 per unit) and embed (1); payee B lists chat (100). Stream 1 is on
    A's price list, stream 2 on B's, stream 3 pays its own price 7 to A. The signers are
    oracles. Returns the manager and the payees."""
    w3 = env.w3
    admin = d.deployer
    accounts = list(w3.eth.accounts)
    payee_a, payee_b = str(accounts[2]), str(accounts[3])
    token = contract(w3, "TestToken", d.token)
    manager = contract(w3, "StreamManager", d.stream_manager)
    send(token.functions.mint(admin, 10**15), admin)
    send(token.functions.approve(d.stream_manager, 2**256 - 1), admin)
    send(manager.functions.addEndpoint(name32("chat"), 3), payee_a)  # A's 1
    send(manager.functions.addEndpoint(name32("embed"), 1), payee_a)  # A's 2
    send(manager.functions.addEndpoint(name32("chat"), 100), payee_b)  # B's 1
    send(manager.functions.openStreamOnPriceList(payee_a, 0, 10**9), admin)  # 1
    send(manager.functions.openStreamOnPriceList(payee_b, 0, 10**9), admin)  # 2
    send(manager.functions.openStream(payee_a, 0, 10**9), admin)  # 3
    send(manager.functions.setUsagePrice(3, 7), admin)
    for s in env.signers:
        send(manager.functions.grantRole(ORACLE_ROLE, s.address), admin)
    return manager, payee_a, payee_b


async def index(env: Env, database_url: str, d: Deployment) -> None:
    target = Target(
        chain_id=d.chain_id,
        addresses={"StreamManager": d.stream_manager, "EscrowVault": d.escrow_vault},
        start_block=d.deployment_block,
    )
    async with open_indexer(env.node.url, database_url, target) as indexer:
        await index_until_caught_up(indexer)


def planner(d: Deployment, ceiling: int | None = None) -> Planner:
    return Planner(
        d.chain_id,
        stream_manager=d.stream_manager,
        escrow_vault=d.escrow_vault,
        settings=SETTINGS.model_copy(
            update={"unknown_stream_grace": 0, "base_fee_ceiling_wei": ceiling}
        ),
    )


async def inbox(env: Env, *rows: tuple[int, int, str, str | None]) -> None:
    async with env.pool.acquire() as conn:
        for sid, units, key, endpoint in rows:
            await conn.execute(
                "INSERT INTO usage_inbox (stream_id, units, producer_key, endpoint) "
                "VALUES ($1, $2, $3, $4)",
                str(sid),
                str(units),
                key,
                endpoint,
            )


async def run_until_idle(
    env: Env, database_url: str, d: Deployment, p: Planner, base_fee: int | None = None
) -> None:
    for _ in range(3):
        async with env.pool.acquire() as conn:
            await p.plan_pass(conn, base_fee=base_fee)
        for _ in range(3):
            await env.manager.tick()
            env.mine()
        await index(env, database_url, d)
        await env.manager.tick()
    async with env.pool.acquire() as conn:
        await p.plan_pass(conn, base_fee=base_fee)


async def reports(env: Env) -> dict[str, tuple[Any, ...]]:
    async with env.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT producer_key, stream_id, endpoint, endpoint_name, price, charged, state "
            "FROM usage_reports ORDER BY inbox_id"
        )
    return {
        r["producer_key"]: (
            int(r["stream_id"]),
            int(r["endpoint"]),
            r["endpoint_name"],
            None if r["price"] is None else int(r["price"]),
            None if r["charged"] is None else int(r["charged"]),
            r["state"],
        )
        for r in rows
    }


async def test_endpoints_are_resolved_recorded_and_priced_and_unknown_ones_kept(
    env: Env, database_url: str
) -> None:
    d = env.deployment
    manager, payee_a, _ = world(env, d)
    await index(env, database_url, d)
    await inbox(
        env,
        (1, 10, "a", "embed"),
        (2, 2, "b", "chat"),
        (1, 4, "c", "chat"),
        (3, 5, "d", None),
        (3, 5, "e", "chat"),  # an own-price stream charges its own price, whatever the endpoint
        (1, 1, "f", "images"),  # A lists no images
        (1, 1, "g", None),  # a price-list stream needs an endpoint
    )
    p = planner(d)
    async with env.pool.acquire() as conn:
        await p.store_settings(conn)
    await run_until_idle(env, database_url, d, p)
    assert await reports(env) == {
        "a": (1, 2, "embed", 1, 10, "recorded"),
        "b": (2, 1, "chat", 100, 200, "recorded"),
        "c": (1, 1, "chat", 3, 12, "recorded"),
        "d": (3, 0, None, 7, 35, "recorded"),
        "e": (3, 1, "chat", 7, 35, "recorded"),
    }
    got = await statuses(env)
    assert got["f"][0::4] == ("rejected", "unknown_endpoint")
    assert got["g"][0::4] == ("rejected", "unknown_endpoint")
    async with env.pool.acquire() as conn:
        detail = await conn.fetchval("SELECT detail FROM usage_inbox WHERE producer_key = 'f'")
        outcomes = await item_outcomes(conn)
    assert "'images'" in detail and payee_a.lower() in detail
    assert manager.functions.getStream(1).call()[5] == 2  # usage sequence
    assert {(r["item"], r["outcome"]) for r in outcomes} == {
        ("1:1", "effect"),
        ("1:2", "effect"),
        ("2:1", "effect"),
        ("3:1", "effect"),
        ("3:2", "effect"),
    }


async def test_usage_in_a_notice_window_goes_out_above_the_ceiling_at_the_old_terms(
    env: Env, database_url: str
) -> None:
    """With a notice period: the payer's close request leaves stream 3 closing for NOTICE
    seconds, payee B's price raise on chat waits as long. Their usage is urgent: planned and
    sent while the base fee is above the ceiling, charged at the old price, before the
    deadline. Usage without a deadline (stream 1) waits for the base fee to fall."""
    d = deploy_all(env.node.url, DEV_KEY0, notice_period=NOTICE)
    manager, _, payee_b = world(env, d)
    send(manager.functions.closeStream(3), d.deployer)  # a request: closing until closeAt
    send(manager.functions.setEndpointPrice(1, 150), payee_b)  # from now + NOTICE
    await index(env, database_url, d)
    await inbox(env, (3, 5, "closing", None), (2, 2, "raised", "chat"), (1, 3, "calm", "chat"))
    p = planner(d, ceiling=10)
    async with env.pool.acquire() as conn:
        await p.store_settings(conn)
        high = await p.plan_pass(conn, base_fee=11)
        pending = await conn.fetch("SELECT kind, deadline FROM keeper.pending_terms ORDER BY kind")
    assert [r["kind"] for r in pending] == ["close", "endpoint_price"]
    usage = [b for b in high.planned if b.kind == "usage"]
    assert [(b.urgent, sorted(b.items)) for b in usage] == [(True, [[2, 2, 1, 1], [3, 5, 1, 0]])]
    assert usage[0].reasons == {"2:1": "endpoint_price_change", "3:1": "stream_closing"}
    assert high.held_by_base_fee == 1
    await run_until_idle(env, database_url, d, p, base_fee=11)
    got = await reports(env)
    assert got["closing"] == (3, 0, None, 7, 35, "recorded")
    assert got["raised"] == (2, 1, "chat", 100, 200, "recorded")  # the old price
    assert got["calm"][-1] == "pending"  # no deadline: held by the ceiling
    head = env.w3.eth.get_block("latest")["timestamp"]
    assert head < manager.functions.closeAtOf(3).call()
    # Past the notice period the stream stops taking usage: a new row is rejected as closed.
    rpc(env.node.url, "evm_increaseTime", [NOTICE])
    env.mine()
    await index(env, database_url, d)
    await inbox(env, (3, 1, "late", None))
    async with env.pool.acquire() as conn:
        await p.plan_pass(conn, base_fee=10)
    assert (await statuses(env))["late"][0::4] == ("rejected", "stream_closed")
