"""A planning pass on three connections at once (`[plan] pass_connections`, the daemon's
default): the usage intake, the settle and refund planning and the usage planning side by side
against a real chain and database. It plans what a pass on one connection plans, each item
once; the reports its intake accepts go out with it or with the next pass; a failure of one
part is contained or raised as on one connection, after the other parts have finished."""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Any

import pytest
from eth_utils import to_checksum_address

from keeper import db as keeper_db
from keeper.chain.oracle_role import ORACLE_ROLE
from keeper.config import PlanConfig
from keeper.db import DatabaseUnavailable
from keeper.dev.anvil import rpc
from keeper.ops.deploy import contract
from keeper.plan.planner import PassReport, Planner
from tests.support.tx import Env
from tests.support.usage import index, send, statuses

pytestmark = pytest.mark.anyio

PAYEE_A = to_checksum_address("0x" + "a1" * 20)
PAYEE_B = to_checksum_address("0x" + "b2" * 20)
SETTINGS = PlanConfig(
    settle_min_amount=100_000, settle_max_interval=3_600, settle_horizon=600, backoff_seconds=60
)


def world(env: Env) -> None:
    """Streams 1 (due by min_amount, usage price 3), 2 (max_interval, price 5), 3 (depleting,
    urgent), 4 (closed), escrow 1 expired and 2 not yet, 4,000 s later in chain time; the
    signers hold ORACLE_ROLE."""
    w3, d = env.w3, env.deployment
    admin = d.deployer
    token = contract(w3, "TestToken", d.token)
    manager = contract(w3, "StreamManager", d.stream_manager)
    vault = contract(w3, "EscrowVault", d.escrow_vault)
    send(token.functions.mint(admin, 10**15), admin)
    send(token.functions.approve(d.stream_manager, 2**256 - 1), admin)
    send(token.functions.approve(d.escrow_vault, 2**256 - 1), admin)
    send(manager.functions.openStream(PAYEE_B, 10_000, 10**12), admin)  # 1
    send(manager.functions.openStream(PAYEE_A, 1, 10**9), admin)  # 2
    send(manager.functions.openStream(PAYEE_A, 1_000, 4_300_000), admin)  # 3
    send(manager.functions.openStream(PAYEE_A, 10_000, 10**9), admin)  # 4
    send(manager.functions.closeStream(4), admin)
    send(manager.functions.setUsagePrice(1, 3), admin)
    send(manager.functions.setUsagePrice(2, 5), admin)
    send(vault.functions.deposit(10**9), admin)
    send(vault.functions.createEscrow(PAYEE_A, 1_000, 100), admin)  # escrow 1
    send(vault.functions.createEscrow(PAYEE_B, 2_000, 100_000), admin)  # escrow 2
    for s in env.signers:
        send(manager.functions.grantRole(ORACLE_ROLE, s.address), admin)
    rpc(env.node.url, "evm_increaseTime", [4_000])
    env.mine()


def planner(env: Env) -> Planner:
    d = env.deployment
    return Planner(
        d.chain_id, stream_manager=d.stream_manager, escrow_vault=d.escrow_vault, settings=SETTINGS
    )


async def inbox(env: Env, *rows: tuple[str, str, str]) -> None:
    async with env.pool.acquire() as conn:
        await conn.executemany(
            "INSERT INTO usage_inbox (stream_id, units, producer_key) VALUES ($1, $2, $3)", rows
        )


async def side_by_side(env: Env, p: Planner) -> PassReport:
    """One pass as the daemon runs it with the default pass_connections (3)."""
    async with AsyncExitStack() as stack:
        conn, *spare = [await stack.enter_async_context(env.pool.acquire()) for _ in range(3)]
        return await p.plan_pass(conn, spare=spare)


def shown(report: PassReport, kind: str) -> list[tuple[bool, Any]]:
    return [(b.urgent, b.items) for b in report.planned if b.kind == kind]


async def test_three_connections_plan_what_one_would_each_item_once(
    env: Env, database_url: str
) -> None:
    world(env)
    await index(env, database_url)
    p = planner(env)
    assert p.usage is not None
    async with env.pool.acquire() as conn:
        await p.store_settings(conn)
    # Reports accepted by an earlier pass's intake are pending; new rows wait in the inbox.
    await inbox(env, ("1", "10", "a"), ("2", "4", "b"))
    async with env.pool.acquire() as conn, conn.transaction():
        assert (await p.usage.intake(conn)).accepted == 2
    await inbox(env, ("1", "7", "c"), ("2", "1", "d"), ("x", "1", "e"))
    # What a pass on one connection would plan (rolled back: nothing is left behind).
    async with env.pool.acquire() as conn:
        tr = conn.transaction()
        await tr.start()
        try:
            alone = await p.plan_pass(conn, dry_run=True)
        finally:
            await tr.rollback()
    assert shown(alone, "settle") == [(True, [3]), (False, [2, 1])]
    assert shown(alone, "refund") == [(False, [1])]
    assert shown(alone, "usage") == [
        (False, [[2, 4, 1, 0], [2, 1, 2, 0], [1, 10, 1, 0], [1, 7, 2, 0]])
    ]

    first = await side_by_side(env, p)
    assert first.usage_error is None
    assert first.intake is not None and first.intake.accepted == 2
    assert first.intake.rejected == {"malformed_stream_id": 1}
    assert first.due["settle"] == 3 and first.due["refund"] == 1
    assert shown(first, "settle") == shown(alone, "settle")
    assert shown(first, "refund") == shown(alone, "refund")
    # The usage planning read the pending reports beside the intake: the earlier ones for
    # sure, the new ones only if the intake committed first.
    [(urgent, items)] = shown(first, "usage")
    assert not urgent
    assert {(2, 4, 1), (1, 10, 1)} <= {(i[0], i[1], i[2]) for i in items}
    assert items in (
        [[2, 4, 1, 0], [1, 10, 1, 0]],
        [[2, 4, 1, 0], [2, 1, 2, 0], [1, 10, 1, 0], [1, 7, 2, 0]],
    )
    async with env.pool.acquire() as conn:
        keys = [r["key"] for r in await conn.fetch("SELECT key FROM intents ORDER BY id")]
    assert sorted(keys) == sorted(b.key for b in first.planned)
    # Everything planned is on its way: a second pass plans none of it again (the new
    # reports, if the first pass left them, wait for their streams' usage in flight).
    again = await side_by_side(env, p)
    assert again.planned == [] and again.already_planned == 0
    assert again.due == {"settle": 0, "refund": 0, "usage": 0}

    # Sent, mined, indexed, reconciled by further side-by-side passes: every report
    # recorded once, at its sequence number.
    for _ in range(4):
        for _ in range(3):
            await env.manager.tick()
            env.mine()
        await index(env, database_url)
        await env.manager.tick()
        assert (await side_by_side(env, p)).usage_error is None
    got = await statuses(env)
    assert {k: v[:3] for k, v in got.items()} == {
        "a": ("recorded", 1, 30),
        "c": ("recorded", 2, 21),
        "b": ("recorded", 1, 20),
        "d": ("recorded", 2, 5),
        "e": ("rejected", None, None),
    }
    async with env.pool.acquire() as conn:
        twice = await conn.fetch(
            "SELECT entity, seq FROM batch_items WHERE kind = 'usage' GROUP BY entity, seq "
            "HAVING count(*) > 1"
        )
        settled = {
            int(r[0])
            for r in await conn.fetch("SELECT entity FROM batch_items WHERE kind = 'settle'")
        }
        refunded = await conn.fetchval("SELECT count(*) FROM escrow_refunded")
    assert twice == []
    assert settled == {1, 2, 3}  # the closed stream 4 never
    assert refunded == 1


@pytest.mark.parametrize("part", ["intake", "reconcile", "due"])
async def test_a_usage_failure_beside_the_others_is_contained(
    env: Env, database_url: str, part: str
) -> None:
    world(env)
    await index(env, database_url)
    p = planner(env)
    assert p.usage is not None
    await inbox(env, ("1", "10", "a"))

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"injected bug in usage {part}")

    setattr(p.usage, part, broken)
    async with env.pool.acquire() as conn:
        await p.store_settings(conn)
    report = await side_by_side(env, p)
    assert str(report.usage_error) == f"injected bug in usage {part}"
    assert shown(report, "settle") == [(True, [3]), (False, [2, 1])]
    assert shown(report, "refund") == [(False, [1])]
    async with env.pool.acquire() as conn:
        kinds = [r["kind"] for r in await conn.fetch("SELECT kind FROM intents ORDER BY id")]
        verdict = await conn.fetchval("SELECT verdict FROM usage_inbox")
    assert sorted(kinds) == ["refund", "settle", "settle"]
    # The intake ran unless it was the broken part.
    assert verdict == (None if part == "intake" else "accepted")


async def test_an_outage_in_one_part_is_raised_after_the_others_finished(
    env: Env, database_url: str
) -> None:
    world(env)
    await index(env, database_url)
    p = planner(env)
    await inbox(env, ("1", "10", "a"), ("2", "4", "b"))

    async def lost(*args: Any, **kwargs: Any) -> Any:
        raise DatabaseUnavailable("injected: the database went away")

    p.due = lost  # type: ignore[method-assign]
    async with env.pool.acquire() as conn:
        await p.store_settings(conn)
    with pytest.raises(DatabaseUnavailable, match="injected"):
        await side_by_side(env, p)
    async with env.pool.acquire() as conn:
        verdicts = [r[0] for r in await conn.fetch("SELECT verdict FROM usage_inbox")]
        kinds = [r[0] for r in await conn.fetch("SELECT kind FROM intents")]
    # The intake and the usage planning ran to their end and committed; nothing was settled.
    assert verdicts == ["accepted", "accepted"]
    assert kinds in ([], ["usage"])


async def test_a_pass_takes_spare_connections_only_when_the_pool_has_them(
    database_url: str,
) -> None:
    small = await keeper_db.create_pool(database_url, min_size=1, max_size=1)
    try:
        async with small.acquire(), AsyncExitStack() as stack:
            assert await keeper_db.spare_connections(small, stack, 2) == []
    finally:
        await small.close()
    pool = await keeper_db.create_pool(database_url, min_size=1, max_size=3)
    try:
        async with pool.acquire():
            async with AsyncExitStack() as stack:
                spare = await keeper_db.spare_connections(pool, stack, 2)
                assert len(spare) == 2
                assert await spare[0].fetchval("SELECT 1") == 1
                assert (
                    await keeper_db.spare_connections(pool, stack, 1) == []
                )  # the pool is used up
                assert await keeper_db.spare_connections(pool, stack, 0) == []
            assert pool.get_idle_size() == 2  # given back when the pass is over
    finally:
        await pool.close()
