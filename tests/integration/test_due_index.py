"""keeper.streams_due by index (streams.due_at, migration 0016) against its full-scan definition.

The view reads only the streams whose due time has passed at the indexed head. A hypothesis
property writes random streams, thresholds and head times (thresholds before or after the
streams, changed afterwards, streams settled afterwards: every path that moves a due time) and
holds the view's rows equal to the definition evaluated over every stream (FULL_SCAN: the view
as it was before the index), and each stored due time exact: the stream is due at that second
by the Python model of the rule and not one second before.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from keeper.plan import accrual
from tests.support.views import CHAIN, PAYEE, PAYER, T0, put_cursor

pytestmark = pytest.mark.anyio

# The definition of keeper.streams_due: every stream valued at the head (keeper.stream_balances),
# then the rule, then what is on its way or backed off left out.
FULL_SCAN = """
WITH held AS MATERIALIZED (
    SELECT f.chain_id, f.item FROM keeper.items_in_flight f WHERE f.kind = 'settle'
    UNION
    SELECT o.chain_id, o.item FROM keeper.items_backed_off o WHERE o.kind = 'settle'
)
SELECT b.chain_id, b.stream_id, b.payer, b.payee, b.accrued_now, b.balance, b.rate,
       b.as_of - b.settled_at AS seconds_since_settled, b.runway_seconds,
       CASE WHEN b.runway_seconds <= ps.settle_horizon THEN 'depleting'
            WHEN b.accrued_now >= ps.settle_min_amount THEN 'min_amount'
            ELSE 'max_interval' END AS reason,
       COALESCE(b.runway_seconds <= ps.settle_horizon, false) AS urgent,
       b.as_of_block, b.as_of
FROM keeper.stream_balances b
JOIN planner_settings ps ON ps.chain_id = b.chain_id
WHERE b.status IN ('open', 'depleted')
  AND b.accrued_now > 0
  AND (b.runway_seconds <= ps.settle_horizon
       OR b.accrued_now >= ps.settle_min_amount
       OR b.as_of - b.settled_at >= ps.settle_max_interval)
  AND NOT EXISTS (SELECT 1 FROM held h WHERE h.chain_id = b.chain_id AND h.item = b.stream_id)
ORDER BY b.chain_id, b.stream_id
"""

INDEXED = "SELECT * FROM keeper.streams_due ORDER BY chain_id, stream_id"


def model_due(
    status: str, balance: int, rate: int, settled_at: int, t: int, th: tuple[int, int, int]
) -> bool:
    """The settle rule in Python (keeper.plan.accrual), at chain time t."""
    min_amount, max_interval, horizon = th
    if status != "open":
        return False
    stream = accrual.Stream(balance=balance, rate=rate, settled_at=settled_at)
    accrued = accrual.accrued_of(stream, t)
    runway = accrual.runway_seconds(stream, t)
    return accrued > 0 and (
        (runway is not None and runway <= horizon)
        or accrued >= min_amount
        or t - settled_at >= max_interval
    )


async def put_settings(db: asyncpg.Connection, th: tuple[int, int, int]) -> None:
    await db.execute(
        """
        INSERT INTO planner_settings (chain_id, settle_min_amount, settle_max_interval,
                                      settle_horizon, backoff_seconds)
        VALUES ($1, $2, $3, $4, 300)
        ON CONFLICT (chain_id) DO UPDATE
        SET settle_min_amount = EXCLUDED.settle_min_amount,
            settle_max_interval = EXCLUDED.settle_max_interval,
            settle_horizon = EXCLUDED.settle_horizon
        """,
        CHAIN,
        *th,
    )


async def put_stream(db: asyncpg.Connection, stream_id: int, s: dict[str, Any]) -> None:
    await db.execute(
        """
        INSERT INTO streams (chain_id, stream_id, payer, payee, rate, balance, settled_at,
                             usage_seq, price, status, opened_block, updated_block, close_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7, 0, 0, $8, 1, 1,
                CASE WHEN $8 = 'closing' THEN $7::bigint + 1000 END)
        """,
        CHAIN,
        stream_id,
        PAYER,
        PAYEE,
        s["rate"],
        s["balance"],
        s["settled_at"],
        s["status"],
    )


def rows(records: list[asyncpg.Record]) -> list[dict[str, Any]]:
    return [dict(r) for r in records]


amounts = st.one_of(st.integers(0, 5_000), st.integers(0, 2**96 - 1))
a_rate = st.one_of(st.just(0), st.integers(1, 50), st.integers(1, 2**64 - 1))
a_stream = st.fixed_dictionaries(
    {
        "balance": amounts,
        "rate": a_rate,
        "settled_at": st.integers(T0 - 5_000, T0),
        "status": st.sampled_from(["open", "open", "open", "closing", "closed"]),
    }
)
thresholds = st.tuples(
    st.one_of(st.just(0), st.integers(1, 10_000), st.integers(1, 2**80)),  # min_amount
    st.one_of(st.integers(1, 4_000), st.just(2**62)),  # max_interval
    st.one_of(st.just(0), st.integers(1, 4_000), st.just(2**62)),  # horizon
)
a_settle = st.tuples(st.integers(0, 5), amounts, st.integers(0, 3_000))


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    streams=st.lists(a_stream, min_size=1, max_size=6),
    first=thresholds,
    later=st.one_of(st.none(), thresholds),
    settings_first=st.booleans(),
    settles=st.lists(a_settle, max_size=3),
    head=st.integers(T0 - 100, T0 + 6_000),
)
async def test_indexed_streams_due_equals_the_full_scan(
    db: asyncpg.Connection,
    streams: list[dict[str, Any]],
    first: tuple[int, int, int],
    later: tuple[int, int, int] | None,
    settings_first: bool,
    settles: list[tuple[int, int, int]],
    head: int,
) -> None:
    # One connection for every example: clear what the previous one wrote.
    await db.execute("DELETE FROM streams; DELETE FROM planner_settings")
    await put_cursor(db, indexed_block=100, indexed_timestamp=head, finalized_block=90)
    if settings_first:
        await put_settings(db, first)
    for i, s in enumerate(streams):
        await put_stream(db, i + 1, s)
    if not settings_first:
        await put_settings(db, first)
    th = first
    if later is not None:
        await put_settings(db, later)
        th = later
    # A settlement (or top-up) moves a stream's balance and settled_at: its due time follows.
    for which, balance, after in settles:
        if which < len(streams):
            s = streams[which]
            s["balance"], s["settled_at"] = balance, s["settled_at"] + after
            await db.execute(
                "UPDATE streams SET balance = $3, settled_at = $4"
                " WHERE chain_id = $1 AND stream_id = $2",
                CHAIN,
                which + 1,
                balance,
                s["settled_at"],
            )

    indexed = rows(await db.fetch(INDEXED))
    assert indexed == rows(await db.fetch(FULL_SCAN))
    event(f"{len(indexed)} due of {len(streams)}")

    stored = {
        int(r["stream_id"]): r["due_at"]
        for r in await db.fetch("SELECT stream_id, due_at FROM streams WHERE chain_id = $1", CHAIN)
    }
    for i, s in enumerate(streams):
        args = (s["status"], s["balance"], s["rate"], s["settled_at"])
        due_at = stored[i + 1]
        if due_at is None:
            # Never due: nothing can accrue (or not open), whatever the time.
            assert not model_due(*args, s["settled_at"] + 2**40, th)
        else:
            assert model_due(*args, due_at, th)
            assert not model_due(*args, due_at - 1, th)


async def test_due_time_follows_thresholds_and_uses_the_index(db: asyncpg.Connection) -> None:
    """A worked example: 1,000/s from T0 with 10^6 deposited; the minimum 300,000 is reached at
    T0 + 300, the maximum interval of 3,600 s later, depletion (T0 + 1,000) minus a horizon of
    900 s at T0 + 100. Changing the thresholds moves the stored time; the planner's query reads
    the streams through streams_due_at_idx."""
    await put_cursor(db, indexed_block=100, indexed_timestamp=T0 + 150, finalized_block=90)
    await put_settings(db, (300_000, 3_600, 60))
    s = {"balance": 10**6, "rate": 1_000, "settled_at": T0, "status": "open"}
    await put_stream(db, 7, s)
    due = "SELECT due_at FROM streams WHERE chain_id = $1 AND stream_id = 7"
    assert await db.fetchval(due, CHAIN) == T0 + 300
    assert await db.fetch(INDEXED) == []
    await put_settings(db, (300_000, 3_600, 900))
    assert await db.fetchval(due, CHAIN) == T0 + 100
    (row,) = await db.fetch(INDEXED)
    assert (row["stream_id"], row["reason"], row["urgent"]) == (Decimal(7), "depleting", True)
    # Settled at T0 + 150 down to 500,000: depletion at T0 + 650, due from T0 + 151 (horizon).
    await db.execute(
        "UPDATE streams SET balance = 500000, settled_at = $2 WHERE chain_id = $1", CHAIN, T0 + 150
    )
    assert await db.fetchval(due, CHAIN) == T0 + 151
    # Closed: never due.
    await db.execute("UPDATE streams SET status = 'closed' WHERE chain_id = $1", CHAIN)
    assert await db.fetchval(due, CHAIN) is None

    await db.execute("SET enable_seqscan = off")
    try:
        plan = "\n".join(
            r[0]
            for r in await db.fetch(
                "EXPLAIN SELECT * FROM keeper.streams_due WHERE chain_id = $1", CHAIN
            )
        )
    finally:
        await db.execute("RESET enable_seqscan")
    assert "streams_due_at_idx" in plan, plan
