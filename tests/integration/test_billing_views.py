"""StreamManager v2's operator views against a real PostgreSQL, rows put straight into the
projections, the event tables and the usage inbox: the price in force at the indexed head
(before and at a pending change's time), closing streams (shown, not settled), usage per
endpoint and day, and the cost estimates of pending usage per stream and endpoint."""

from __future__ import annotations

from datetime import date

import asyncpg
import pytest

from keeper.service.status import collect_status, render_status
from tests.support.views import CHAIN, PAYEE, PAYER, T0, put_cursor, put_fee

pytestmark = pytest.mark.anyio

OTHER_PAYEE = bytes.fromhex("cd" * 20)


async def put_stream(
    db: asyncpg.Connection,
    stream_id: int,
    *,
    balance: int = 10**6,
    rate: int = 10,
    settled_at: int = T0,
    status: str = "open",
    price: int = 0,
    price_list: bool = False,
    pending: tuple[int, int] | None = None,
    close_at: int | None = None,
    payee: bytes = PAYEE,
) -> None:
    await db.execute(
        """
        INSERT INTO streams (chain_id, stream_id, payer, payee, rate, balance, settled_at,
                             usage_seq, price, status, opened_block, updated_block, price_list,
                             close_at, price_pending, price_effective_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7, 0, $8, $9, 1, 10, $10, $11, $12, $13)
        """,
        CHAIN,
        stream_id,
        PAYER,
        payee,
        rate,
        balance,
        settled_at,
        price,
        status,
        price_list,
        close_at,
        pending[0] if pending else None,
        pending[1] if pending else None,
    )


async def put_endpoint(
    db: asyncpg.Connection,
    endpoint: int,
    name: str,
    price: int,
    pending: tuple[int, int] | None = None,
    payee: bytes = PAYEE,
) -> None:
    await db.execute(
        """
        INSERT INTO endpoints (chain_id, payee, endpoint, name, price, price_pending,
                               price_effective_at, added_block, updated_block)
        VALUES ($1, $2, $3, $4, $5, $6, $7, 1, 10)
        """,
        CHAIN,
        payee,
        endpoint,
        name,
        price,
        pending[0] if pending else None,
        pending[1] if pending else None,
    )


async def put_pending_report(
    db: asyncpg.Connection, stream_id: int, seq: int, units: int, endpoint: int = 0
) -> None:
    inbox_id = await db.fetchval(
        """
        INSERT INTO usage_inbox (chain_id, stream_id, units, producer_key, verdict, validated_at)
        VALUES ($1, $2, $3, $4, 'accepted', now()) RETURNING id
        """,
        CHAIN,
        str(stream_id),
        str(units),
        f"k-{stream_id}-{seq}",
    )
    await db.execute(
        """
        INSERT INTO usage_reports (inbox_id, chain_id, stream_id, seq, units, producer_key,
                                   observed_at, endpoint)
        VALUES ($1, $2, $3, $4, $5, $6, now(), $7)
        """,
        inbox_id,
        CHAIN,
        stream_id,
        seq,
        units,
        f"k-{stream_id}-{seq}",
        endpoint,
    )


async def test_prices_in_force_follow_the_indexed_head(db: asyncpg.Connection) -> None:
    """A pending change shows as pending until the head's timestamp reaches its time, then as
    the price (for a stream's own price and for a list price alike)."""
    await put_fee(db, 250)
    await put_stream(db, 1, price=10, pending=(4, T0 + 100))
    await put_endpoint(db, 1, "api/v1", 7, pending=(9, T0 + 100))
    for now, expected in ((T0 + 99, (10, 4, T0 + 100, 7, 9)), (T0 + 100, (4, None, None, 9, None))):
        await put_cursor(db, indexed_block=20, indexed_timestamp=now)
        s = await db.fetchrow("SELECT * FROM keeper.stream_balances WHERE stream_id = 1")
        e = await db.fetchrow("SELECT * FROM keeper.price_list WHERE endpoint = 1")
        assert s is not None and e is not None
        got = (
            s["price"],
            s["price_pending"],
            s["price_effective_at"],
            e["price"],
            e["pending_price"],
        )
        assert got == expected
        terms = await db.fetch("SELECT kind FROM keeper.pending_terms ORDER BY kind")
        assert [t["kind"] for t in terms] == (
            ["endpoint_price", "stream_price"] if now < T0 + 100 else []
        )


async def test_a_closing_stream_is_shown_and_not_due(db: asyncpg.Connection) -> None:
    await put_fee(db, 250)
    await put_cursor(db, indexed_block=20, indexed_timestamp=T0 + 5_000)
    await db.execute(
        "INSERT INTO planner_settings (chain_id, settle_min_amount, settle_max_interval, "
        "settle_horizon, backoff_seconds) VALUES ($1, 1, 60, 600, 60)",
        CHAIN,
    )
    await put_stream(db, 1)
    await put_stream(db, 2, rate=0, status="closing", close_at=T0 + 600)
    await put_stream(db, 3, status="closed", balance=0)
    rows = {int(r["stream_id"]): r for r in await db.fetch("SELECT * FROM keeper.stream_balances")}
    assert {i: r["status"] for i, r in rows.items()} == {1: "open", 2: "closing", 3: "closed"}
    assert rows[2]["accrued_now"] == 0 and rows[2]["close_at"] == T0 + 600
    assert rows[2]["runway_seconds"] is None
    due = await db.fetch("SELECT stream_id FROM keeper.streams_due")
    assert [int(r["stream_id"]) for r in due] == [1]
    close = await db.fetch("SELECT stream_id, seconds_left FROM keeper.pending_terms")
    assert [(int(r["stream_id"]), r["seconds_left"]) for r in close] == [(2, 0)]

    await put_endpoint(db, 1, "api/v1", 7, pending=(9, T0 + 5_060))
    status = await collect_status(db, CHAIN)
    assert status["pending"]["terms"] == {"closing": 1, "price_changes": 1, "next_in": 60}
    screen = render_status(status)
    assert "terms       1 streams closing, 1 price changes announced, the next due in 60 s" in (
        screen
    )


async def test_usage_by_endpoint_daily(db: asyncpg.Connection) -> None:
    await put_stream(db, 1)
    await put_endpoint(db, 2, "search", 3)
    midnight = (T0 // 86_400 + 1) * 86_400
    recorded = [
        # block, log, time, stream, seq, endpoint, units, charged, fee, shortfall, price
        (10, 0, midnight - 1, 1, 1, 0, 10, 100, 2, 0, 10),
        (11, 0, midnight, 1, 2, 2, 5, 15, 0, 0, 3),
        (11, 1, midnight + 10, 1, 3, 2, 7, 10, 1, 11, 3),
        (11, 2, midnight + 20, 1, 4, 0, 1, 10, 0, 0, 10),
    ]
    await db.executemany(
        """
        INSERT INTO usage_recorded (chain_id, block_number, log_index, tx_hash, block_time,
                                    stream_id, seq, endpoint, units, charged, fee, shortfall,
                                    balance_after, price)
        VALUES ($1, $2, $3, '\\x01', $4, $5, $6, $7, $8, $9, $10, $11, 0, $12)
        """,
        [(CHAIN, *r) for r in recorded],
    )
    rows = await db.fetch("SELECT * FROM keeper.usage_by_endpoint_daily ORDER BY day, endpoint")
    got = [
        (
            r["day"],
            int(r["endpoint"]),
            r["endpoint_name"],
            r["reports"],
            int(r["units"]),
            int(r["charged"]),
            int(r["fee"]),
            int(r["payee_credited"]),
            int(r["shortfall"]),
            r["last_block"],
        )
        for r in rows
    ]
    assert got == [
        (date(2023, 11, 14), 0, None, 1, 10, 100, 2, 98, 0, 10),
        (date(2023, 11, 15), 0, None, 1, 1, 10, 0, 10, 0, 11),
        (date(2023, 11, 15), 2, "search", 2, 12, 25, 1, 24, 11, 11),
    ]


async def test_usage_estimates_price_pending_usage_per_endpoint(db: asyncpg.Connection) -> None:
    """Own-price streams charge their own price in force whatever the endpoint; price-list
    streams the endpoint's list price in force, none for an endpoint not listed. The balance
    after settling what has accrued decides whether the estimate is affordable."""
    await put_fee(db, 250)
    now = T0 + 100
    await put_cursor(db, indexed_block=20, indexed_timestamp=now)
    await put_endpoint(db, 1, "api/v1", 7, pending=(2, now))  # 2 in force at the head
    await put_endpoint(db, 2, "search", 50)
    # Stream 1: own price 5, accrued 100 * 10 = 1000 of 2000.
    await put_stream(db, 1, balance=2_000, price=5)
    # Stream 2: on the price list, accrued 1000 of 1_500.
    await put_stream(db, 2, balance=1_500, price_list=True)
    await put_stream(db, 3, status="closed", balance=0)
    await put_pending_report(db, 1, 1, 100, endpoint=0)
    await put_pending_report(db, 1, 2, 50, endpoint=2)
    await put_pending_report(db, 2, 1, 100, endpoint=1)
    await put_pending_report(db, 2, 2, 3, endpoint=1)
    await put_pending_report(db, 2, 3, 20, endpoint=2)
    await put_pending_report(db, 2, 4, 1, endpoint=9)
    await put_pending_report(db, 3, 1, 1)
    rows = await db.fetch("SELECT * FROM keeper.usage_estimates ORDER BY stream_id, endpoint")
    got = [
        (
            int(r["stream_id"]),
            int(r["endpoint"]),
            r["endpoint_name"],
            r["pending_reports"],
            int(r["pending_units"]),
            r["price"],
            r["estimate_cost"],
            int(r["balance_after_settlement"]),
            r["can_afford"],
        )
        for r in rows
    ]
    assert got == [
        (1, 0, None, 1, 100, 5, 500, 1_000, True),
        (1, 2, "search", 1, 50, 5, 250, 1_000, True),
        (2, 1, "api/v1", 2, 103, 2, 206, 500, True),
        (2, 2, "search", 1, 20, 50, 1_000, 500, False),
        (2, 9, None, 1, 1, None, None, 500, None),
    ]
    per_stream = await db.fetch(
        "SELECT stream_id, pending_units, pending_cost, can_afford FROM keeper.usage_affordability"
        " ORDER BY stream_id"
    )
    assert [
        tuple(int(v) if not isinstance(v, bool) else v for v in r.values()) for r in per_stream
    ] == [
        (1, 150, 750, True),
        (2, 124, 1_206, False),
    ]
