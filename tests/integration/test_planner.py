"""The settle and refund planners against a real chain, index and outbox: what is due and why,
batches by gas and urgency, nothing planned twice, and the work done end to end through the
transaction manager."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from eth_utils import to_checksum_address

from keeper.config import PlanConfig
from keeper.dev.anvil import rpc
from keeper.ops.deploy import contract, deploy_all
from keeper.plan.batches import encode_batch
from keeper.plan.planner import Planner
from tests.support.chain import DEV_KEY0
from tests.support.ingest import Target, index_until_caught_up, open_indexer
from tests.support.tx import Env, item_outcomes
from tests.support.usage import keeper_plan

pytestmark = pytest.mark.anyio

PAYEE_A = to_checksum_address("0x" + "a1" * 20)
PAYEE_B = to_checksum_address("0x" + "b2" * 20)
SETTINGS = PlanConfig(
    settle_min_amount=100_000, settle_max_interval=3_600, settle_horizon=600, backoff_seconds=60
)


def send(fn: Any, sender: str) -> None:
    params: Any = {"from": sender}
    fn.transact(params)


def world(env: Env) -> None:
    """Streams and escrows in every planning situation, 4,000 s later in chain time:
    1 min_amount, 2 max_interval, 3 depleting (urgent), 4 closed, then 5 opened 10 s before
    the head (not due); escrow 1 expired, escrow 2 not yet."""
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
    send(vault.functions.deposit(10**9), admin)
    send(vault.functions.createEscrow(PAYEE_A, 1_000, 100), admin)  # escrow 1
    send(vault.functions.createEscrow(PAYEE_B, 2_000, 100_000), admin)  # escrow 2
    rpc(env.node.url, "evm_increaseTime", [4_000])
    env.mine()
    send(manager.functions.openStream(PAYEE_B, 10, 10**9), admin)  # 5: opened just now
    rpc(env.node.url, "evm_increaseTime", [10])
    env.mine()


async def index(env: Env, database_url: str) -> None:
    d = env.deployment
    target = Target(
        chain_id=d.chain_id,
        addresses={"StreamManager": d.stream_manager, "EscrowVault": d.escrow_vault},
        start_block=d.deployment_block,
    )
    async with open_indexer(env.node.url, database_url, target) as indexer:
        await index_until_caught_up(indexer)


def planner(env: Env, settings: PlanConfig = SETTINGS) -> Planner:
    d = env.deployment
    return Planner(
        d.chain_id,
        stream_manager=d.stream_manager,
        escrow_vault=d.escrow_vault,
        settings=settings,
    )


async def test_a_pass_plans_what_is_due_with_its_reason(env: Env, database_url: str) -> None:
    world(env)
    await index(env, database_url)
    p = planner(env)
    async with env.pool.acquire() as conn:
        await p.store_settings(conn)
        due = {
            int(r["stream_id"]): (r["reason"], r["urgent"])
            for r in await conn.fetch("SELECT * FROM keeper.streams_due")
        }
        report = await p.plan_pass(conn)
    assert due == {
        1: ("min_amount", False),
        2: ("max_interval", False),
        3: ("depleting", True),
    }
    assert report.due == {"settle": 3, "refund": 1, "usage": 0}
    kinds = [(b.kind, b.urgent, b.items) for b in report.planned]
    # The urgent batch stands alone; the ordinary one is ordered by payee (A = 0xa1.. first).
    assert kinds == [("settle", True, [3]), ("settle", False, [2, 1]), ("refund", False, [1])]
    assert report.planned[1].reasons == {"1": "min_amount", "2": "max_interval"}
    async with env.pool.acquire() as conn:
        intents = await conn.fetch("SELECT kind, urgent, calldata FROM intents ORDER BY id")
        items = await conn.fetch(
            "SELECT i.key, b.kind, b.entity FROM batch_items b JOIN intents i ON i.id = b.intent_id"
            " ORDER BY b.intent_id, b.position"
        )
        # A second pass finds everything on its way: nothing is planned twice.
        again = await p.plan_pass(conn)
        assert await conn.fetchval("SELECT count(*) FROM keeper.streams_due") == 0
        assert await conn.fetchval("SELECT count(*) FROM keeper.escrows_refundable") == 0
    assert [(r["kind"], r["urgent"]) for r in intents] == [
        ("settle", True),
        ("settle", False),
        ("refund", False),
    ]
    assert bytes(intents[1]["calldata"]) == encode_batch("settle", [2, 1])
    # Each planned item is a typed row of its intent, in the calldata's order.
    assert [(r["key"], r["kind"], r["entity"]) for r in items] == [
        (b.key, b.kind, i) for b in report.planned for i in b.items
    ]
    assert again.planned == [] and again.due == {"settle": 0, "refund": 0, "usage": 0}


async def test_due_work_is_done_end_to_end(env: Env, database_url: str) -> None:
    world(env)
    world_time = env.w3.eth.get_block("latest")["timestamp"]
    await index(env, database_url)
    p = planner(env)
    async with env.pool.acquire() as conn:
        await p.store_settings(conn)
        await p.plan_pass(conn)
    for _ in range(3):
        await env.manager.tick()
        env.mine()
    await index(env, database_url)
    report = await env.manager.tick()
    assert report.effects_checked == 3
    manager = contract(env.w3, "StreamManager", env.deployment.stream_manager)
    vault = contract(env.w3, "EscrowVault", env.deployment.escrow_vault)
    settled_at = {i: manager.functions.getStream(i).call()[4] for i in (1, 2, 3, 5)}
    # Streams 1-3 were settled after the 4,000 s jump; stream 5 (not due) was left alone.
    assert all(settled_at[i] >= world_time for i in (1, 2, 3))
    assert settled_at[5] == world_time - 10  # opened then, never settled
    assert vault.functions.getEscrow(1).call()[-1] == 3  # STATUS_REFUNDED
    assert vault.functions.getEscrow(2).call()[-1] == 1  # still open
    async with env.pool.acquire() as conn:
        outcomes = await item_outcomes(conn)
        assert {(r["kind"], r["item"], r["outcome"]) for r in outcomes} == {
            ("settle", "1", "effect"),
            ("settle", "2", "effect"),
            ("settle", "3", "effect"),
            ("refund", "1", "effect"),
        }
        # Everything was done: the next pass plans nothing again, except that stream 3, which
        # is running out, is due once more if a second of chain time has passed since its
        # settlement (a depleting stream is settled as it goes).
        report2 = await p.plan_pass(conn)
    assert all(b.items == [3] and b.urgent for b in report2.planned), report2.planned


async def test_batches_are_cut_by_gas_and_held_above_the_base_fee_ceiling(
    env: Env, database_url: str
) -> None:
    world(env)
    await index(env, database_url)
    small = SETTINGS.model_copy(
        update={
            "max_batch_gas": 60_000 + 16_000,  # one stream per batch
            "base_fee_ceiling_wei": 1,
        }
    )
    p = planner(env, small)
    async with env.pool.acquire() as conn:
        await p.store_settings(conn)
        dry = await p.plan_pass(conn, base_fee=2 * 10**9, dry_run=True)
        assert await conn.fetchval("SELECT count(*) FROM intents") == 0  # a dry run plans nothing
        cheap = await p.plan_pass(conn, base_fee=1, dry_run=True)
    # Above the ceiling only the urgent (depleting) stream goes; the rest waits.
    assert [(b.kind, b.items) for b in dry.planned] == [("settle", [3])]
    assert dry.held_by_base_fee == 3  # streams 1 and 2, escrow 1
    assert [(b.kind, b.items) for b in cheap.planned] == [
        ("settle", [3]),
        ("settle", [1]),
        ("settle", [2]),
        ("refund", [1]),
    ]


async def test_keeper_plan_is_a_dry_run_with_reasons_and_simulated_gas(
    env: Env, database_url: str, tmp_path: Path
) -> None:
    world(env)
    await index(env, database_url)
    result = json.loads(keeper_plan(env, database_url, tmp_path, "--json"))
    assert [(b["kind"], b["urgent"], b["items"]) for b in result["batches"]] == [
        ("settle", True, [3]),
        ("settle", False, [2, 1]),
        ("refund", False, [1]),
    ]
    assert result["batches"][1]["reasons"] == {"2": "max_interval", "1": "min_amount"}
    assert all(b["simulated_gas"] > 21_000 for b in result["batches"])
    text = keeper_plan(env, database_url, tmp_path)
    assert "3 streams to settle, 1 escrows to refund" in text
    assert "depleting=1" in text and "max_interval=1, min_amount=1" in text
    async with env.pool.acquire() as conn:
        # Nothing planned, and the thresholds were not left behind either.
        assert await conn.fetchval("SELECT count(*) FROM intents") == 0
        assert await conn.fetchval("SELECT count(*) FROM planner_settings") == 0


@pytest.mark.parametrize("part", ["intake", "reconcile", "due"])
async def test_a_usage_failure_does_not_hold_up_settlement(
    env: Env, database_url: str, part: str
) -> None:
    """An unexpected error in the usage part of a pass (validating the inbox, reconciling, or
    finding the reports due) is contained there: settlement and refunds are planned as ever."""
    world(env)
    await index(env, database_url)
    p = planner(env)
    assert p.usage is not None

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"injected bug in usage {part}")

    setattr(p.usage, part, broken)
    async with env.pool.acquire() as conn:
        await p.store_settings(conn)
        report = await p.plan_pass(conn)
        planned = await conn.fetchval("SELECT count(*) FROM intents")
    assert isinstance(report.usage_error, RuntimeError)
    assert str(report.usage_error) == f"injected bug in usage {part}"
    kinds = [(b.kind, b.items) for b in report.planned]
    assert kinds == [("settle", [3]), ("settle", [2, 1]), ("refund", [1])]
    assert planned == 3


async def test_a_closing_stream_is_never_settled(env: Env, database_url: str) -> None:
    """With a notice period, a payer's close request leaves the stream closing: settled at the
    request, rate 0 from then on. However long it waits for its close_at, the settle planner
    leaves it alone; an open stream beside it is settled as ever."""
    d = deploy_all(env.node.url, DEV_KEY0, notice_period=3_600)
    admin = d.deployer
    token = contract(env.w3, "TestToken", d.token)
    manager = contract(env.w3, "StreamManager", d.stream_manager)
    send(token.functions.mint(admin, 10**15), admin)
    send(token.functions.approve(d.stream_manager, 2**256 - 1), admin)
    send(manager.functions.openStream(PAYEE_A, 10_000, 10**12), admin)  # 1: closing
    send(manager.functions.openStream(PAYEE_B, 10_000, 10**12), admin)  # 2: open
    rpc(env.node.url, "evm_increaseTime", [1_000])
    env.mine()
    send(manager.functions.closeStream(1), admin)
    rpc(env.node.url, "evm_increaseTime", [1_000])
    env.mine()
    target = Target(
        chain_id=d.chain_id,
        addresses={"StreamManager": d.stream_manager, "EscrowVault": d.escrow_vault},
        start_block=d.deployment_block,
    )
    async with open_indexer(env.node.url, database_url, target) as indexer:
        await index_until_caught_up(indexer)
    p = Planner(
        d.chain_id, stream_manager=d.stream_manager, escrow_vault=d.escrow_vault, settings=SETTINGS
    )
    async with env.pool.acquire() as conn:
        await p.store_settings(conn)
        status = await conn.fetch("SELECT stream_id, status, rate FROM streams ORDER BY stream_id")
        report = await p.plan_pass(conn)
    assert [(int(r["stream_id"]), r["status"], int(r["rate"])) for r in status] == [
        (1, "closing", 0),
        (2, "open", 10_000),
    ]
    assert [(b.kind, b.items) for b in report.planned] == [("settle", [2])]
