"""Usage billed per endpoint against a real PostgreSQL (no chain: the indexed state is written
as the indexer would): intake resolves endpoint names to ids and keeps rows it cannot bill with
their reason, reconciliation stores the price charged, and the planner sends the usage of a
stream in a notice window above the base-fee ceiling, and never settles a closing stream."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from structlog.testing import capture_logs

from keeper import metrics
from keeper.config import PlanConfig
from keeper.plan.batches import encode_batch
from keeper.plan.planner import Planner
from keeper.plan.usage import URGENT_REASONS, UsageOracle

pytestmark = pytest.mark.anyio

CHAIN = 31337
PA, PB = b"\xaa" * 20, b"\xbb" * 20
PAYER = b"\xcc" * 20
HEAD_TIME = 1_800_000_000
SETTINGS = PlanConfig(
    settle_min_amount=1, settle_max_interval=10**9, settle_horizon=0, backoff_seconds=60
)


def urgent_count(reason: str) -> float:
    value = metrics.REGISTRY.get_sample_value("keeper_usage_urgent_total", {"reason": reason})
    return value or 0.0


async def indexed(db: asyncpg.Connection) -> None:
    """The indexed head at HEAD_TIME, and streams in every billing situation:
    1 list stream of payee A, 2 own-price stream of payee A (price 7), 3 list stream of payee B,
    4 closing (closes 300 s after the head), 5 own-price with a lower price announced,
    6 closing and past its close_at, 7 closed, 8 list stream of payee B (its "chat" endpoint
    changes price)."""
    await db.execute(
        "INSERT INTO ingest_cursor (chain_id, start_block, indexed_block, indexed_timestamp, "
        "backfill_done, finalized_block) VALUES ($1, 0, 100, $2, true, 90)",
        CHAIN,
        HEAD_TIME,
    )
    streams: list[tuple[Any, ...]] = [
        # id, payee, rate, price, status, price_list, close_at, pending, effective_at
        (1, PA, 0, 0, "open", True, None, None, None),
        (2, PA, 0, 7, "open", False, None, None, None),
        (3, PB, 0, 0, "open", True, None, None, None),
        (4, PA, 0, 5, "closing", False, HEAD_TIME + 300, None, None),
        (5, PB, 0, 9, "open", False, None, 4, HEAD_TIME + 600),
        (6, PA, 0, 5, "closing", False, HEAD_TIME - 1, None, None),
        (7, PA, 0, 5, "closed", False, None, None, None),
        (8, PB, 0, 0, "open", True, None, None, None),
    ]
    for sid, payee, rate, price, status, listed, close_at, pending, effective in streams:
        await db.execute(
            "INSERT INTO streams (chain_id, stream_id, payer, payee, rate, balance, settled_at, "
            "usage_seq, price, status, opened_block, updated_block, price_list, close_at, "
            "price_pending, price_effective_at) "
            "VALUES ($1, $2, $3, $4, $5, 10000000, $6, 0, $7, $8, 1, 1, $9, $10, $11, $12)",
            CHAIN,
            Decimal(sid),
            PAYER,
            payee,
            Decimal(rate),
            HEAD_TIME - 10,
            Decimal(price),
            status,
            listed,
            close_at,
            None if pending is None else Decimal(pending),
            effective,
        )
    endpoints: list[tuple[Any, ...]] = [
        (PA, 1, "chat", 3, None, None),
        (PA, 2, "embed", 1, None, None),
        (PB, 1, "chat", 11, 13, HEAD_TIME + 600),  # a raise announced
        (PB, 2, "images", 50, 40, HEAD_TIME - 5),  # a cut already in force
    ]
    for payee, eid, name, price, pending, effective in endpoints:
        await db.execute(
            "INSERT INTO endpoints (chain_id, payee, endpoint, name, price, price_pending, "
            "price_effective_at, added_block, updated_block) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, 1, 1)",
            CHAIN,
            payee,
            Decimal(eid),
            name,
            Decimal(price),
            None if pending is None else Decimal(pending),
            effective,
        )


async def inbox(db: asyncpg.Connection, *rows: tuple[Any, ...]) -> None:
    """(stream_id, units, producer_key, endpoint) rows, received an hour ago (past any grace)."""
    for sid, units, key, endpoint in rows:
        await db.execute(
            "INSERT INTO usage_inbox (stream_id, units, producer_key, endpoint, received_at) "
            "VALUES ($1, $2, $3, $4, now() - interval '1 hour')",
            None if sid is None else str(sid),
            str(units),
            key,
            endpoint,
        )


async def intake(db: asyncpg.Connection) -> Any:
    async with db.transaction():
        return await UsageOracle(CHAIN).intake(db)


async def test_endpoint_names_resolve_to_ids_and_unknown_ones_are_kept_with_their_reason(
    db: asyncpg.Connection,
) -> None:
    await indexed(db)
    await inbox(
        db,
        (1, 10, "a", "embed"),  # list stream, listed endpoint: id 2
        (1, 10, "b", "images"),  # payee A lists no "images" (payee B does)
        (1, 10, "c", None),  # a list stream needs an endpoint
        (2, 10, "d", None),  # own price: none, endpoint 0
        (2, 10, "e", "chat"),  # own price with a listed endpoint
        (2, 10, "f", "Chat"),  # names match exactly
        (3, 10, "g", "images"),  # payee B's "images": id 2
        (3, 10, "h", "x" * 33),  # longer than a bytes32
        (4, 10, "i", None),  # closing, before close_at
        (6, 10, "j", None),  # closing, past close_at
        (str(2**64), 10, "k", None),  # an id no report can carry
    )
    report = await intake(db)
    assert report.accepted == 5 and report.waiting == 0
    assert report.rejected == {
        "unknown_endpoint": 3,
        "malformed_endpoint": 1,
        "stream_closed": 1,
        "stream_id_out_of_range": 1,
    }
    accepted = await db.fetch(
        "SELECT producer_key, stream_id, seq, endpoint, endpoint_name FROM usage_reports "
        "ORDER BY inbox_id"
    )
    assert [
        (r["producer_key"], int(r["stream_id"]), int(r["seq"]), int(r["endpoint"]))
        for r in accepted
    ] == [("a", 1, 1, 2), ("d", 2, 1, 0), ("e", 2, 2, 1), ("g", 3, 1, 2), ("i", 4, 1, 0)]
    assert [r["endpoint_name"] for r in accepted] == ["embed", None, "chat", "images", None]
    # Every row is kept: the rejected ones with their reason and a detail naming the endpoint
    # and the payee.
    assert await db.fetchval("SELECT count(*) FROM usage_inbox") == 11
    rejected = {
        r["producer_key"]: (r["reason"], r["detail"])
        for r in await db.fetch("SELECT producer_key, reason, detail FROM keeper.usage_rejected")
    }
    assert rejected["b"][0] == "unknown_endpoint"
    assert "'images'" in rejected["b"][1] and "0x" + PA.hex() in rejected["b"][1]
    assert rejected["c"][0] == "unknown_endpoint" and "names no endpoint" in rejected["c"][1]
    assert rejected["f"][0] == "unknown_endpoint" and "'Chat'" in rejected["f"][1]
    assert rejected["h"][0] == "malformed_endpoint"
    assert rejected["j"][0] == "stream_closed" and "closing" in rejected["j"][1]
    assert rejected["k"][0] == "stream_id_out_of_range"


async def test_a_fresh_row_for_an_endpoint_not_indexed_yet_waits(db: asyncpg.Connection) -> None:
    await indexed(db)
    await db.execute(
        "INSERT INTO usage_inbox (stream_id, units, producer_key, endpoint) "
        "VALUES ('1', '3', 'new', 'images')"
    )
    report = await intake(db)
    assert (report.accepted, report.rejected, report.waiting) == (0, {}, 1)
    await db.execute(
        "INSERT INTO endpoints (chain_id, payee, endpoint, name, price, added_block, "
        "updated_block) VALUES ($1, $2, 3, 'images', 2, 101, 101)",
        CHAIN,
        PA,
    )
    report = await intake(db)
    assert report.accepted == 1
    assert await db.fetchval("SELECT endpoint FROM usage_reports") == 3


async def test_reconciliation_stores_the_price_charged(db: asyncpg.Connection) -> None:
    await indexed(db)
    await inbox(db, (1, 10, "a", "chat"), (1, 4, "b", "chat"))
    await intake(db)
    await db.execute("UPDATE streams SET usage_seq = 2 WHERE stream_id = 1")
    for seq, endpoint, units, price in ((1, 1, 10, 3), (2, 2, 4, 1)):  # 2: another endpoint
        await db.execute(
            "INSERT INTO usage_recorded (chain_id, block_number, log_index, tx_hash, block_time, "
            "stream_id, seq, endpoint, units, charged, fee, shortfall, balance_after, price) "
            "VALUES ($1, 95, $2, $3, $4, 1, $9, $5, $6, $7, 0, 0, 0, $8)",
            CHAIN,
            seq,
            b"\x01" * 32,
            HEAD_TIME - 20,
            Decimal(endpoint),
            Decimal(units),
            Decimal(units * price),
            Decimal(price),
            Decimal(seq),
        )
    async with db.transaction():
        counts = await UsageOracle(CHAIN).reconcile(db)
    assert counts == {"undone": 0, "recorded": 1, "rejected": 1}
    rows = await db.fetch(
        "SELECT state, charged, price, reason, detail FROM usage_reports ORDER BY seq"
    )
    assert (rows[0]["state"], rows[0]["charged"], rows[0]["price"]) == ("recorded", 30, 3)
    assert (rows[1]["state"], rows[1]["reason"], rows[1]["price"]) == (
        "rejected",
        "sequence_taken",
        None,
    )
    assert "units of endpoint 2" in rows[1]["detail"]


def planner(ceiling: int | None = None) -> Planner:
    return Planner(
        CHAIN,
        stream_manager="0x" + "11" * 20,
        escrow_vault="0x" + "22" * 20,
        settings=SETTINGS.model_copy(update={"base_fee_ceiling_wei": ceiling}),
    )


async def test_usage_in_a_notice_window_is_urgent_and_goes_out_above_the_ceiling(
    db: asyncpg.Connection,
) -> None:
    await indexed(db)
    await inbox(
        db,
        (1, 10, "a", "chat"),  # payee A's chat: no change pending
        (4, 10, "b", None),  # closing stream
        (5, 10, "c", None),  # own price lowered from HEAD_TIME + 600
        (8, 10, "d", "chat"),  # payee B's chat is raised from HEAD_TIME + 600
        (8, 2, "e", "images"),  # payee B's images: its cut is in force already
        (2, 10, "f", None),  # nothing pending
    )
    p = planner(ceiling=10)
    await p.store_settings(db)
    before = {r: urgent_count(r) for r in URGENT_REASONS}
    with capture_logs() as logs:
        high = await p.plan_pass(db, base_fee=11)
    assert high.usage_error is None
    assert high.intake is not None and high.intake.accepted == 6
    assert high.due["usage"] == 6
    (batch,) = [b for b in high.planned if b.kind == "usage"]
    assert batch.urgent
    # Payee A's closing stream, then payee B's streams; stream 8's run is urgent as a whole.
    assert batch.items == [[4, 10, 1, 0], [5, 10, 1, 0], [8, 10, 1, 1], [8, 2, 2, 2]]
    assert batch.reasons == {
        "4:1": "stream_closing",
        "5:1": "price_change",
        "8:1": "endpoint_price_change",
        "8:2": "usage",
    }
    # Priced as the contract would charge now: own 5 and 9, list 11 and the cut 40.
    assert batch.amount == 10 * 5 + 10 * 9 + 10 * 11 + 2 * 40
    assert high.held_by_base_fee == 2  # streams 1 and 2: ordinary usage waits
    (line,) = [e for e in logs if e["event"] == "usage_urgent_planned"]
    deadlines = {"stream_closing": 1, "price_change": 1, "endpoint_price_change": 1}
    assert line["reports"] == 4 and line["deadlines"] == deadlines
    assert line["above_base_fee_ceiling"] is True
    assert {r: urgent_count(r) - before[r] for r in URGENT_REASONS} == deadlines
    intent = await db.fetchrow("SELECT urgent, calldata FROM intents WHERE kind = 'usage'")
    assert intent is not None and intent["urgent"] is True
    assert bytes(intent["calldata"]) == encode_batch("usage", batch.items)
    # Under the ceiling the rest goes out, in an ordinary batch.
    low = await p.plan_pass(db, base_fee=10)
    assert [(b.urgent, b.items) for b in low.planned if b.kind == "usage"] == [
        (False, [[1, 10, 1, 1], [2, 10, 1, 0]])
    ]


async def test_a_closing_stream_is_never_planned_for_settlement(db: asyncpg.Connection) -> None:
    await indexed(db)
    # Stream 2 accrues; stream 4 is closing: were its rate not 0 it would be due too.
    await db.execute("UPDATE streams SET rate = 1000 WHERE stream_id IN (2, 4)")
    p = planner()
    await p.store_settings(db)
    report = await p.plan_pass(db)
    settled = [b.items for b in report.planned if b.kind == "settle"]
    assert settled == [[2]]


async def test_reports_a_closing_stream_can_no_longer_take_are_rejected_once_final(
    db: asyncpg.Connection,
) -> None:
    """Stream 4 closes at HEAD_TIME + 300. Its pending report stays pending while a block
    before close_at may still record it, and is rejected as closed once the finalized block is
    past close_at (no reorg can bring an earlier block back)."""
    await indexed(db)
    await inbox(db, (4, 10, "a", None))
    await intake(db)
    close_at = HEAD_TIME + 300
    await db.execute(
        "INSERT INTO stream_close_requested (chain_id, block_number, log_index, tx_hash, "
        "block_time, stream_id, close_at) VALUES ($1, 80, 0, $2, $3, 4, $4)",
        CHAIN,
        b"\x02" * 32,
        close_at - 600,
        close_at,
    )
    oracle = UsageOracle(CHAIN)

    async def block(number: int, timestamp: int) -> None:
        await db.execute(
            "INSERT INTO blocks (chain_id, number, hash, parent_hash, timestamp) "
            "VALUES ($1, $2, $3, $3, $4)",
            CHAIN,
            number,
            number.to_bytes(32, "big"),
            timestamp,
        )

    await block(90, close_at - 1)  # the finalized block: before close_at
    await block(100, close_at + 5)  # the head: past it, but not final
    async with db.transaction():
        assert (await oracle.reconcile(db))["rejected"] == 0
    await db.execute("UPDATE ingest_cursor SET finalized_block = 100")
    async with db.transaction():
        assert (await oracle.reconcile(db))["rejected"] == 1
    row = await db.fetchrow("SELECT state, reason, detail, block_number FROM usage_reports")
    assert row is not None
    assert (row["state"], row["reason"], row["block_number"]) == ("rejected", "stream_closed", 80)
    assert f"took usage until {close_at}" in row["detail"]
    # Pending usage of a closing stream past close_at is never planned either.
    runs = await oracle.due(db, 10)
    assert runs == []
