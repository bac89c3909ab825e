"""The usage oracle against a real chain, index and outbox: intake with kept rejections,
sequence numbers, recordUsage batches, reconciliation (recorded with shortfall, closed
streams, gaps and replays the contract reports, reorgs) and affordability."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from keeper.chain.oracle_role import ORACLE_ROLE, signers_without_oracle_role
from keeper.db.outbox import IntentRequest, Outbox
from keeper.dev.anvil import rpc
from keeper.plan.batches import encode_batch
from keeper.plan.planner import Planner
from keeper.plan.usage import UsageOracle
from tests.support.tx import Env, item_outcomes
from tests.support.usage import SETTINGS, index, keeper_plan, send, statuses, world

pytestmark = pytest.mark.anyio


def planner(env: Env) -> Planner:
    d = env.deployment
    return Planner(
        d.chain_id, stream_manager=d.stream_manager, escrow_vault=d.escrow_vault, settings=SETTINGS
    )


async def inbox(env: Env, *rows: tuple[Any, ...]) -> None:
    """Insert (stream_id, units, producer_key[, label[, observed_at]]) rows as producers do."""
    async with env.pool.acquire() as conn:
        for row in rows:
            padded = [None if v is None else str(v) for v in (*row, *(None,) * (5 - len(row)))]
            await conn.execute(
                "INSERT INTO usage_inbox (stream_id, units, producer_key, label, observed_at) "
                "VALUES ($1, $2, $3, $4, $5)",
                *padded,
            )


async def run_until_idle(env: Env, database_url: str, p: Planner, passes: int = 4) -> None:
    """Plan, send, mine, index and reconcile until nothing is left to do."""
    for _ in range(passes):
        async with env.pool.acquire() as conn:
            await p.plan_pass(conn)
        for _ in range(3):
            await env.manager.tick()
            env.mine()
        await index(env, database_url)
        await env.manager.tick()
    async with env.pool.acquire() as conn:
        await p.plan_pass(conn)


async def test_intake_numbers_good_rows_and_keeps_bad_ones_with_reasons(
    env: Env, database_url: str
) -> None:
    world(env)
    await index(env, database_url)
    async with env.pool.acquire() as conn:
        # Producers may insert numbers and times into the text fields as they are.
        await conn.execute(
            "INSERT INTO usage_inbox (stream_id, units, producer_key, label) "
            "VALUES (1, 10, 'a', 'GET /a')"
        )
    await inbox(
        env,
        ("2", "4", "b"),
        (1, 7, "c", None, "2026-11-21T10:00:00Z"),
        ("1", "abc", "d"),
        (1, 0, "e"),
        (1, str(2**64), "f"),
        (3, 5, "g"),  # closed
        (2, 1, "a"),  # key taken
        (1, 1, None),
        (1, 2, "h", None, "tomorrow"),
        (2, 9, "i"),
    )
    async with env.pool.acquire() as conn:
        # A row for an id at or below the highest indexed one that does not exist: rejected.
        await conn.execute(
            "INSERT INTO streams SELECT chain_id, 10, payer, payee, rate, balance, settled_at, "
            "usage_seq, price, status, opened_block, updated_block FROM streams "
            "WHERE stream_id = 1"
        )
        await conn.execute("DELETE FROM streams WHERE stream_id = 10")
    await inbox(env, (9, 1, "j"))  # 9 > highest (3): may be a new stream, waits
    oracle = UsageOracle(env.deployment.chain_id, unknown_stream_grace=300)
    async with env.pool.acquire() as conn, conn.transaction():
        report = await oracle.intake(conn)
    assert report.accepted == 4 and report.waiting == 1
    assert report.rejected == {
        "malformed_units": 1,
        "units_not_positive": 1,
        "units_out_of_range": 1,
        "stream_closed": 1,
        "duplicate_producer_key": 1,
        "missing_producer_key": 1,
        "malformed_observed_at": 1,
    }
    got = await statuses(env)
    assert got["a"][:2] == ("pending", 1)
    assert got["c"][:2] == ("pending", 2)
    assert got["b"][:2] == ("pending", 1)
    assert got["i"][:2] == ("pending", 2)
    assert got["j"][:2] == ("received", None)
    async with env.pool.acquire() as conn:
        rejected = {
            (r["producer_key"], r["reason"]): r["detail"]
            for r in await conn.fetch("SELECT * FROM keeper.usage_rejected")
        }
        assert ("d", "malformed_units") in rejected and "'abc'" in rejected[
            ("d", "malformed_units")
        ]
        assert ("g", "stream_closed") in rejected
        assert (None, "missing_producer_key") in rejected
        # Every row is still there: 12 inserted, 7 rejected, 4 accepted, 1 waiting.
        assert await conn.fetchval("SELECT count(*) FROM usage_inbox") == 12
        assert await conn.fetchval("SELECT count(*) FROM keeper.usage_pending") == 5
        # Past the grace period the waiting row is rejected as unknown.
        await conn.execute("UPDATE usage_inbox SET received_at = now() - interval '1 hour'")
        async with conn.transaction():
            later = await oracle.intake(conn)
        assert later.rejected == {"unknown_stream": 1}
        # A second intake finds nothing left and hands out no number twice.
        async with conn.transaction():
            assert (await oracle.intake(conn)).validated == 0
        seqs = await conn.fetch("SELECT stream_id, seq FROM usage_reports ORDER BY inbox_id")
        assert [(int(r["stream_id"]), int(r["seq"])) for r in seqs] == [
            (1, 1),
            (2, 1),
            (1, 2),
            (2, 2),
        ]
        afford = {
            int(r["stream_id"]): (int(r["pending_cost"]), r["can_afford"])
            for r in await conn.fetch("SELECT * FROM keeper.usage_affordability")
        }
    assert afford == {1: (17 * 3, True), 2: (13 * 1_000, False)}


async def test_reports_are_recorded_once_with_charge_and_shortfall(
    env: Env, database_url: str
) -> None:
    manager = world(env)
    await index(env, database_url)
    await inbox(env, (1, 10, "a"), (2, 3, "b"), (1, 20, "c"), (2, 4, "d"), (2, 1, "e"))
    p = planner(env)
    async with env.pool.acquire() as conn:
        await p.store_settings(conn)
        first = await p.plan_pass(conn)
    assert first.intake is not None and first.intake.accepted == 5
    # One batch, payee A's stream first, each stream's run in sequence order.
    assert [(b.kind, b.items) for b in first.planned] == [
        ("usage", [[2, 3, 1, 0], [2, 4, 2, 0], [2, 1, 3, 0], [1, 10, 1, 0], [1, 20, 2, 0]])
    ]
    await run_until_idle(env, database_url, p)
    got = await statuses(env)
    # Stream 2 holds 5,000 at 1,000 per unit: 3 units charge 3,000, the next 4 only the
    # 2,000 left (shortfall 2,000), the last one nothing (shortfall 1,000).
    assert got == {
        "a": ("recorded", 1, 30, 0, None),
        "c": ("recorded", 2, 60, 0, None),
        "b": ("recorded", 1, 3_000, 0, None),
        "d": ("recorded", 2, 2_000, 2_000, None),
        "e": ("recorded", 3, 0, 1_000, None),
    }
    assert manager.functions.getStream(1).call()[5] == 2
    assert manager.functions.getStream(2).call()[5] == 3
    assert manager.functions.getStream(2).call()[2] == 0
    async with env.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM keeper.usage_pending") == 0
        assert await conn.fetchval("SELECT count(*) FROM intents WHERE kind = 'usage'") == 1
        outcomes = await item_outcomes(conn)
    assert {(r["item"], r["outcome"]) for r in outcomes} == {
        ("1:1", "effect"),
        ("1:2", "effect"),
        ("2:1", "effect"),
        ("2:2", "effect"),
        ("2:3", "effect"),
    }


async def test_a_stream_closed_before_its_reports_land_rejects_them(
    env: Env, database_url: str
) -> None:
    manager = world(env)
    await index(env, database_url)
    await inbox(env, (2, 1, "a"), (2, 1, "b"))
    oracle = UsageOracle(env.deployment.chain_id)
    async with env.pool.acquire() as conn, conn.transaction():
        assert (await oracle.intake(conn)).accepted == 2
    send(manager.functions.closeStream(2), env.deployment.deployer)
    await index(env, database_url)
    async with env.pool.acquire() as conn, conn.transaction():
        counts = await oracle.reconcile(conn)
    assert counts == {"undone": 0, "recorded": 0, "rejected": 2}
    got = await statuses(env)
    assert {k: v[0::4] for k, v in got.items()} == {
        "a": ("rejected", "stream_closed"),
        "b": ("rejected", "stream_closed"),
    }


async def usage_intent(env: Env, key: str, items: list[list[int]]) -> None:
    async with env.pool.acquire() as conn:
        await Outbox(env.deployment.chain_id).plan(
            conn,
            IntentRequest(
                kind="usage",
                key=key,
                target=env.deployment.stream_manager,
                calldata=encode_batch("usage", items),
                items=items,
            ),
        )


async def test_gaps_and_replays_reported_by_the_contract_are_handled(
    env: Env, database_url: str
) -> None:
    manager = world(env)
    await index(env, database_url)
    await inbox(env, (1, 5, "a"), (1, 6, "b"))
    p = planner(env)
    async with env.pool.acquire() as conn:
        await p.store_settings(conn)
        async with conn.transaction():
            await p.usage.intake(conn)  # type: ignore[union-attr]
    # Report 2 arrives on its own before report 1 (as a batch on another signer could): the
    # contract skips it as a gap. The keeper sends both again, in order.
    await usage_intent(env, "early", [[1, 6, 2, 0]])
    await run_until_idle(env, database_url, p)
    assert manager.functions.getStream(1).call()[5] == 2
    got = await statuses(env)
    assert got["a"][:3] == ("recorded", 1, 15) and got["b"][:3] == ("recorded", 2, 18)
    # A replay of report 1 (a stale copy of a batch) is skipped: nothing is charged twice.
    balance = manager.functions.getStream(1).call()[2]
    await usage_intent(env, "replay", [[1, 5, 1, 0]])
    await run_until_idle(env, database_url, p, passes=1)
    assert manager.functions.getStream(1).call()[2] == balance
    async with env.pool.acquire() as conn:
        skipped = await conn.fetch(
            "SELECT seq, reason FROM usage_skipped WHERE stream_id = 1 ORDER BY block_number"
        )
        recorded = await conn.fetchval("SELECT count(*) FROM usage_recorded WHERE stream_id = 1")
    assert [(int(r["seq"]), r["reason"]) for r in skipped] == [(2, 5), (1, 4)]  # gap, replay
    assert recorded == 2
    assert await statuses(env) == got


async def test_a_reorged_recording_is_undone_and_recorded_again_once(
    env: Env, database_url: str
) -> None:
    manager = world(env)
    await index(env, database_url)
    await inbox(env, (1, 5, "a"))
    p = planner(env)
    async with env.pool.acquire() as conn:
        await p.store_settings(conn)
        await p.plan_pass(conn)
    await env.manager.tick()  # sent; automine puts it in a block
    await index(env, database_url)
    async with env.pool.acquire() as conn:
        await p.plan_pass(conn)
        block = await conn.fetchval("SELECT block_number FROM usage_reports")
    assert (await statuses(env))["a"][0] == "recorded"
    head = env.w3.eth.block_number
    rpc(env.node.url, "anvil_rollback", [head - block + 1])  # the recording block is gone
    env.mine(2)
    assert manager.functions.getStream(1).call()[5] == 0
    await index(env, database_url)
    async with env.pool.acquire() as conn, conn.transaction():
        assert (await p.usage.reconcile(conn))["undone"] == 1  # type: ignore[union-attr]
    assert (await statuses(env))["a"][0] in ("pending", "sending")
    await run_until_idle(env, database_url, p, passes=2)
    assert (await statuses(env))["a"][:3] == ("recorded", 1, 15)
    assert manager.functions.getStream(1).call()[5] == 1
    async with env.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM usage_recorded") == 1


async def test_stale_reconciliations_are_searched_for_only_after_a_new_reorg(
    env: Env, database_url: str
) -> None:
    """Only a reorg deletes indexed events (and records itself in `reorgs` as it does): the
    reports above the finalized block are searched only when a reorg newer than the last one
    handled is recorded. Here the event is deleted by hand, without a reorg row, to show the
    search is not made; a reorg row then brings it back."""
    world(env)
    await index(env, database_url)
    await inbox(env, (1, 5, "a"))
    p = planner(env)
    await run_until_idle(env, database_url, p, passes=1)
    assert (await statuses(env))["a"][0] == "recorded"
    async with env.pool.acquire() as conn:
        assert await conn.fetchval("SELECT reorg_id FROM usage_reorgs_checked") == 0
        await conn.execute("DELETE FROM usage_recorded")
        async with conn.transaction():
            assert (await p.usage.reconcile(conn))["undone"] == 0  # type: ignore[union-attr]
    assert (await statuses(env))["a"][0] == "recorded"
    async with env.pool.acquire() as conn:
        reorg = await conn.fetchval(
            "INSERT INTO reorgs (chain_id, depth, ancestor_block, old_head_block, old_head_hash) "
            "VALUES ($1, 1, 1, 2, '\\x00') RETURNING id",
            env.deployment.chain_id,
        )
        # Rolled back: the mark goes with the undone reconciliation, and the next pass looks.
        tr = conn.transaction()
        await tr.start()
        assert (await p.usage.reconcile(conn))["undone"] == 1  # type: ignore[union-attr]
        await tr.rollback()
        async with conn.transaction():
            assert (await p.usage.reconcile(conn))["undone"] == 1  # type: ignore[union-attr]
        assert await conn.fetchval("SELECT reorg_id FROM usage_reorgs_checked") == reorg
        async with conn.transaction():
            assert (await p.usage.reconcile(conn))["undone"] == 0  # type: ignore[union-attr]
    assert (await statuses(env))["a"][0] in ("pending", "sending")


async def test_usage_needs_the_oracle_role_of_every_signer(env: Env) -> None:
    manager = world(env, grant=False)
    addresses = [s.address for s in env.signers]
    lacking = await signers_without_oracle_role(
        env.manager.client, env.deployment.stream_manager, addresses
    )
    assert lacking == addresses
    send(manager.functions.grantRole(ORACLE_ROLE, addresses[0]), env.deployment.deployer)
    lacking = await signers_without_oracle_role(
        env.manager.client, env.deployment.stream_manager, addresses
    )
    assert lacking == addresses[1:]


async def test_keeper_plan_shows_usage_batches_and_leaves_the_inbox_as_it_was(
    env: Env, database_url: str, tmp_path: Path
) -> None:
    world(env)
    await index(env, database_url)
    await inbox(env, (1, 10, "a"), (2, 3, "b"), (1, "x", "c"))
    result = json.loads(keeper_plan(env, database_url, tmp_path, "--json"))
    assert result["due"]["usage"] == 2
    (usage,) = [b for b in result["batches"] if b["kind"] == "usage"]
    assert usage["items"] == [[2, 3, 1, 0], [1, 10, 1, 0]]
    assert usage["simulated_gas"] > 21_000  # from the deployment's oracle account
    text = keeper_plan(env, database_url, tmp_path)
    assert "2 usage reports to record" in text and "stream:seq: 2:1 1:1" in text
    async with env.pool.acquire() as conn:
        # A dry run: the rows are still waiting for the daemon's validation.
        assert await conn.fetchval("SELECT count(*) FROM usage_inbox WHERE verdict IS NULL") == 3
        assert await conn.fetchval("SELECT count(*) FROM usage_reports") == 0


async def test_usage_waits_above_the_base_fee_ceiling(env: Env, database_url: str) -> None:
    world(env)
    await index(env, database_url)
    await inbox(env, (1, 10, "a"), (2, 3, "b"))
    d = env.deployment
    settings = SETTINGS.model_copy(update={"base_fee_ceiling_wei": 10})
    p = Planner(
        d.chain_id, stream_manager=d.stream_manager, escrow_vault=d.escrow_vault, settings=settings
    )
    async with env.pool.acquire() as conn:
        await p.store_settings(conn)
        high = await p.plan_pass(conn, base_fee=11)
        # Validated and numbered all the same; only the sending waits.
        assert high.intake is not None and high.intake.accepted == 2
        assert high.planned == [] and high.held_by_base_fee == 2
        low = await p.plan_pass(conn, base_fee=10)
    assert [(b.kind, len(b.items)) for b in low.planned] == [("usage", 2)]
