"""The operator views in schema `keeper` against a real PostgreSQL.

Rows go straight into the projection tables, the ingest cursor, contract_params and the event
tables (no chain involved); the tests then read the views. A hypothesis property holds the
SQL accrual (keeper.stream_balances and the keeper.* functions) equal to keeper.plan.accrual.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import asyncpg
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from keeper.plan import accrual
from tests.support.views import CHAIN, OTHER, PAYEE, PAYER, T0, put_cursor, put_fee

pytestmark = pytest.mark.anyio

OTHER_CHAIN = 8453


def hex_of(raw: bytes) -> str:
    return "0x" + raw.hex()


def at(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def opt_int(value: Decimal | int | None) -> int | None:
    return None if value is None else int(value)


async def put_stream(
    db: asyncpg.Connection,
    stream_id: int,
    *,
    balance: int,
    rate: int,
    settled_at: int,
    status: str = "open",
    updated_block: int = 10,
    usage_seq: int = 0,
    price: int = 0,
    chain_id: int = CHAIN,
) -> None:
    await db.execute(
        """
        INSERT INTO streams (chain_id, stream_id, payer, payee, rate, balance, settled_at,
                             usage_seq, price, status, opened_block, updated_block)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 1, $11)
        """,
        chain_id,
        stream_id,
        PAYER,
        PAYEE,
        rate,
        balance,
        settled_at,
        usage_seq,
        price,
        status,
        updated_block,
    )


async def put_escrow(
    db: asyncpg.Connection,
    escrow_id: int,
    *,
    expires_at: int,
    status: str = "open",
    amount: int = 1_000,
    updated_block: int = 10,
    chain_id: int = CHAIN,
) -> None:
    await db.execute(
        """
        INSERT INTO escrows (chain_id, escrow_id, payer, payee, amount, expires_at, status,
                             created_block, updated_block)
        VALUES ($1, $2, $3, $4, $5, $6, $7, 1, $8)
        """,
        chain_id,
        escrow_id,
        PAYER,
        PAYEE,
        amount,
        expires_at,
        status,
        updated_block,
    )


async def stream_row(db: asyncpg.Connection, stream_id: int) -> asyncpg.Record:
    row = await db.fetchrow(
        "SELECT * FROM keeper.stream_balances WHERE chain_id = $1 AND stream_id = $2",
        CHAIN,
        stream_id,
    )
    assert row is not None
    return row


# ------------------------------------------------------------------------- stream_balances


async def test_stream_balances_values_an_open_stream_at_the_indexed_head(
    db: asyncpg.Connection,
) -> None:
    await put_cursor(db, indexed_block=50, indexed_timestamp=T0 + 100, finalized_block=40)
    await put_fee(db, 250)
    await put_stream(db, 1, balance=10_000_000, rate=1_001, settled_at=T0, usage_seq=7, price=3)

    row = await stream_row(db, 1)

    assert row["payer"] == hex_of(PAYER)
    assert row["payee"] == "0x" + "ab" * 19 + "cd"
    assert row["status"] == "open"
    assert int(row["balance"]) == 10_000_000
    assert int(row["rate"]) == 1_001
    assert row["settled_at"] == T0
    assert row["settled_at_time"] == at(T0)
    assert (row["as_of_block"], row["as_of"], row["as_of_time"]) == (50, T0 + 100, at(T0 + 100))
    assert int(row["accrued_now"]) == 100_100
    assert row["fee_bps"] == 250
    assert int(row["claimable"]) == 100_100 - 100_100 * 250 // 10_000  # fee 2_502, rounded down
    assert int(row["balance_after_settle"]) == 10_000_000 - 100_100
    depletes = T0 + -(-10_000_000 // 1_001)  # ceil: 9_991 s after settled_at
    assert int(row["depletion_time"]) == depletes == T0 + 9_991
    assert row["depletion_at"] == at(depletes)
    assert int(row["runway_seconds"]) == depletes - (T0 + 100)
    assert (int(row["usage_seq"]), int(row["price"])) == (7, 3)
    assert (row["opened_block"], row["updated_block"]) == (1, 10)
    assert (row["final"], row["pending"]) == (True, False)


async def test_stream_balances_status_depleted_closed_and_rate_zero(
    db: asyncpg.Connection,
) -> None:
    now = T0 + 1_000
    await put_cursor(db, indexed_block=50, indexed_timestamp=now, finalized_block=50)
    await put_fee(db, 100)
    await put_stream(db, 1, balance=500, rate=1, settled_at=T0)  # accrues exactly 500 at T0+500
    await put_stream(db, 2, balance=0, rate=5, settled_at=T0)  # empty: depleted at once
    await put_stream(db, 3, balance=900, rate=0, settled_at=T0)  # never accrues
    await put_stream(db, 4, balance=0, rate=5, settled_at=T0, status="closed")
    await put_stream(db, 5, balance=5_000, rate=1, settled_at=now)  # just settled

    depleted = await stream_row(db, 1)
    assert depleted["status"] == "depleted"
    assert int(depleted["accrued_now"]) == 500
    assert int(depleted["claimable"]) == 495
    assert int(depleted["balance_after_settle"]) == 0
    assert int(depleted["runway_seconds"]) == 0
    assert int(depleted["depletion_time"]) == T0 + 500

    empty = await stream_row(db, 2)
    assert empty["status"] == "depleted"
    assert int(empty["accrued_now"]) == 0
    assert int(empty["depletion_time"]) == T0
    assert int(empty["runway_seconds"]) == 0

    idle = await stream_row(db, 3)
    assert idle["status"] == "open"
    assert int(idle["accrued_now"]) == 0
    assert idle["runway_seconds"] is None
    assert idle["depletion_time"] is None
    assert idle["depletion_at"] is None

    closed = await stream_row(db, 4)
    assert closed["status"] == "closed"
    assert int(closed["accrued_now"]) == 0
    assert int(closed["claimable"]) == 0
    assert closed["runway_seconds"] is None
    assert closed["depletion_time"] is None

    fresh = await stream_row(db, 5)
    assert fresh["status"] == "open"
    assert int(fresh["accrued_now"]) == 0
    assert int(fresh["runway_seconds"]) == 5_000


async def test_stream_balances_without_chain_time_or_fee_say_unknown_not_zero(
    db: asyncpg.Connection,
) -> None:
    # No cursor row and no contract_params: the view cannot know "now" or the fee.
    await put_stream(db, 1, balance=1_000, rate=1, settled_at=T0)

    row = await stream_row(db, 1)

    assert row["accrued_now"] is None
    assert row["claimable"] is None
    assert row["runway_seconds"] is None
    assert int(row["depletion_time"]) == T0 + 1_000
    assert row["status"] == "open"
    assert (row["final"], row["pending"]) == (False, True)


async def test_depletion_beyond_year_9999_is_infinity(db: asyncpg.Connection) -> None:
    await put_cursor(db, indexed_block=5, indexed_timestamp=T0)
    await put_fee(db, 0)
    await put_stream(db, 1, balance=2**96 - 1, rate=1, settled_at=T0)

    row = await stream_row(db, 1)

    assert int(row["depletion_time"]) == T0 + 2**96 - 1
    assert int(row["runway_seconds"]) == 2**96 - 1
    # asyncpg decodes timestamptz 'infinity' as datetime.max.
    assert row["depletion_at"] == datetime.max


balances = st.one_of(st.integers(0, 2**96 - 1), st.integers(0, 10_000))
rates = st.one_of(st.just(0), st.integers(1, 100), st.integers(0, 2**64 - 1))
elapsed = st.one_of(st.integers(0, 200), st.integers(0, 2**32))


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    balance=balances,
    rate=rates,
    settled_at=st.integers(0, 2**40),
    gap=elapsed,
    is_open=st.sampled_from([True, True, True, False]),
    fee_bps=st.integers(0, 1_000),
    before=st.integers(0, 2**20),
)
async def test_sql_accrual_equals_python_model(
    db: asyncpg.Connection,
    balance: int,
    rate: int,
    settled_at: int,
    gap: int,
    is_open: bool,
    fee_bps: int,
    before: int,
) -> None:
    # One connection for every example: clear what the previous example wrote.
    await db.execute("DELETE FROM streams")
    head = settled_at + gap
    await put_cursor(db, indexed_block=100, indexed_timestamp=head, finalized_block=100)
    await put_fee(db, fee_bps)
    status = accrual.StreamStatus.OPEN if is_open else accrual.StreamStatus.CLOSED
    await put_stream(
        db,
        1,
        balance=balance,
        rate=rate,
        settled_at=settled_at,
        status="open" if is_open else "closed",
    )
    model = accrual.Stream(balance=balance, rate=rate, settled_at=settled_at, status=status)

    row = await stream_row(db, 1)

    accrued = accrual.accrued_of(model, head)
    assert int(row["accrued_now"]) == accrued
    assert int(row["claimable"]) == accrued - accrual.fee_of(accrued, fee_bps)
    assert int(row["balance_after_settle"]) == balance - accrued
    assert opt_int(row["runway_seconds"]) == accrual.runway_seconds(model, head)
    assert opt_int(row["depletion_time"]) == accrual.depletion_time(model)
    expected_status = "closed" if not is_open else "depleted" if balance - accrued == 0 else "open"
    assert row["status"] == expected_status
    runway = row["runway_seconds"]
    event(f"{expected_status}, runway {'none' if runway is None else '>0' if runway else '0'}")

    # The functions on their own, also at a "now" before settled_at (nothing accrues).
    earlier = settled_at - before
    fn = await db.fetchrow(
        "SELECT keeper.accrued($1, $2, $3, $4) AS accrued,"
        " keeper.accrued($1, $2, $3, $5) AS accrued_earlier,"
        " keeper.fee_of($1, $6) AS fee, keeper.depletion_time($1, $2, $3) AS depletion",
        balance,
        rate,
        settled_at,
        head,
        earlier,
        fee_bps,
    )
    assert fn is not None
    assert int(fn["accrued"]) == accrual.accrued(balance, rate, settled_at, head)
    assert int(fn["accrued_earlier"]) == accrual.accrued(balance, rate, settled_at, earlier) == 0
    assert int(fn["fee"]) == accrual.fee_of(balance, fee_bps)
    open_model = accrual.Stream(balance=balance, rate=rate, settled_at=settled_at)
    assert opt_int(fn["depletion"]) == accrual.depletion_time(open_model)


async def test_functions_propagate_null_and_format_hex(db: asyncpg.Connection) -> None:
    row = await db.fetchrow(
        """
        SELECT keeper.accrued(10, 1, 5, NULL) AS no_time,
               keeper.accrued(0, 1, 5, NULL) AS empty,
               keeper.fee_of(NULL, 250) AS no_amount,
               keeper.fee_of(9999, 1) AS rounded_down,
               keeper.depletion_time(10, 0, 5) AS never,
               keeper.hex('\\x00ff10'::bytea) AS hex,
               keeper.hex(NULL) AS no_hex,
               keeper.to_time(NULL) AS no_time_at
        """
    )
    assert row is not None
    assert row["no_time"] is None
    assert int(row["empty"]) == 0
    assert row["no_amount"] is None
    assert int(row["rounded_down"]) == 0
    assert row["never"] is None
    assert row["hex"] == "0x00ff10"
    assert row["no_hex"] is None
    assert row["no_time_at"] is None


# ----------------------------------------------------------------------- pending / final


async def test_rows_at_or_below_the_finalized_block_are_final_the_rest_pending(
    db: asyncpg.Connection,
) -> None:
    await put_cursor(db, indexed_block=120, indexed_timestamp=T0, finalized_block=100)
    await put_stream(db, 1, balance=1, rate=1, settled_at=T0, updated_block=99)
    await put_stream(db, 2, balance=1, rate=1, settled_at=T0, updated_block=100)
    await put_stream(db, 3, balance=1, rate=1, settled_at=T0, updated_block=101)
    await put_escrow(db, 1, expires_at=T0 + 10, updated_block=100)
    await put_escrow(db, 2, expires_at=T0 + 10, updated_block=101)
    await db.executemany(
        "INSERT INTO vault_accounts (chain_id, account, available, locked, updated_block)"
        " VALUES ($1, $2, $3, $4, $5)",
        [(CHAIN, PAYER, 700, 300, 100), (CHAIN, PAYEE, 5, 0, 115)],
    )
    # A chain whose node has not reported a finalized block yet: nothing is final.
    await put_cursor(db, indexed_block=9, indexed_timestamp=T0, chain_id=OTHER_CHAIN)
    await put_stream(db, 1, balance=1, rate=1, settled_at=T0, updated_block=1, chain_id=OTHER_CHAIN)

    streams = await db.fetch(
        "SELECT chain_id, stream_id, final, pending FROM keeper.stream_balances"
        " ORDER BY chain_id, stream_id"
    )
    assert [(r["chain_id"], int(r["stream_id"]), r["final"], r["pending"]) for r in streams] == [
        (OTHER_CHAIN, 1, False, True),
        (CHAIN, 1, True, False),
        (CHAIN, 2, True, False),
        (CHAIN, 3, False, True),
    ]
    escrows = await db.fetch("SELECT escrow_id, final, pending FROM keeper.escrows ORDER BY 1")
    assert [(int(r["escrow_id"]), r["final"], r["pending"]) for r in escrows] == [
        (1, True, False),
        (2, False, True),
    ]
    vault = await db.fetch(
        "SELECT account, available, locked, total, final, pending FROM keeper.vault_accounts"
        " ORDER BY account"
    )
    assert [
        (r["account"], int(r["available"]), int(r["locked"]), int(r["total"]), r["final"])
        for r in vault
    ] == [(hex_of(PAYER), 700, 300, 1_000, True), (hex_of(PAYEE), 5, 0, 5, False)]
    assert [r["pending"] for r in vault] == [False, True]


# ------------------------------------------------------------------------------ escrows


async def test_escrows_expired_uses_chain_time_and_includes_the_boundary(
    db: asyncpg.Connection,
) -> None:
    head = T0 + 7 * 86_400
    await put_cursor(db, indexed_block=80, indexed_timestamp=head, finalized_block=70)
    await put_escrow(db, 1, expires_at=head - 1)  # overdue by one second
    await put_escrow(db, 2, expires_at=head)  # expires exactly at the head: refundable
    await put_escrow(db, 3, expires_at=head + 1)  # one second short
    await put_escrow(db, 4, expires_at=head - 500, status="released")
    await put_escrow(db, 5, expires_at=head - 500, status="refunded")

    rows = await db.fetch("SELECT * FROM keeper.escrows_expired ORDER BY escrow_id")

    assert [int(r["escrow_id"]) for r in rows] == [1, 2]
    assert [r["seconds_overdue"] for r in rows] == [1, 0]
    first = rows[0]
    assert (first["payer"], first["payee"]) == (hex_of(PAYER), hex_of(PAYEE))
    assert int(first["amount"]) == 1_000
    assert first["expires_at"] == head - 1
    assert first["expires_at_time"] == at(head - 1)
    assert (first["as_of_block"], first["as_of"]) == (80, head)

    everything = await db.fetch(
        "SELECT escrow_id, status, expired, expires_at_time FROM keeper.escrows ORDER BY 1"
    )
    assert [(int(r["escrow_id"]), r["status"], r["expired"]) for r in everything] == [
        (1, "open", True),
        (2, "open", True),
        (3, "open", False),
        (4, "released", False),
        (5, "refunded", False),
    ]
    assert everything[2]["expires_at_time"] == at(head) + timedelta(seconds=1)

    # Chain time moves, the wall clock never matters: one more second expires escrow 3.
    await put_cursor(db, indexed_block=81, indexed_timestamp=head + 1, finalized_block=70)
    later = await db.fetch("SELECT escrow_id, seconds_overdue FROM keeper.escrows_expired")
    assert sorted((int(r["escrow_id"]), r["seconds_overdue"]) for r in later) == [
        (1, 2),
        (2, 1),
        (3, 0),
    ]


async def test_escrows_expired_is_empty_without_chain_time(db: asyncpg.Connection) -> None:
    await put_cursor(db, indexed_block=-1, indexed_timestamp=None)
    await put_escrow(db, 1, expires_at=0)

    assert await db.fetch("SELECT * FROM keeper.escrows_expired") == []
    assert await db.fetchval("SELECT expired FROM keeper.escrows") is False


# --------------------------------------------------------------------------------- usage


async def test_usage_daily_groups_by_stream_and_utc_day(db: asyncpg.Connection) -> None:
    midnight = (T0 // 86_400 + 1) * 86_400  # 2023-11-15 00:00:00 UTC
    recorded = [
        # block, log, time, stream, seq, units, charged, fee, shortfall
        (10, 0, midnight - 1, 1, 1, 10, 1_000, 25, 0),
        (11, 0, midnight, 1, 2, 5, 500, 12, 0),
        (11, 1, midnight + 3_600, 1, 3, 7, 300, 7, 400),
        (11, 2, midnight + 10, 2, 1, 1, 100, 2, 0),
    ]
    await db.executemany(
        """
        INSERT INTO usage_recorded (chain_id, block_number, log_index, tx_hash, block_time,
                                    stream_id, seq, endpoint, units, charged, fee, shortfall,
                                    balance_after, price)
        VALUES ($1, $2, $3, $4, $5, $6, $7, 0, $8, $9, $10, $11, 0, 100)
        """,
        [(CHAIN, *r[:2], b"\x01" * 32, *r[2:]) for r in recorded],
    )
    skipped = [
        # block, log, time, stream, seq, last_seq, reason
        (11, 3, midnight + 20, 1, 2, 3, 4),  # replay
        (11, 4, midnight + 20, 1, 9, 3, 5),  # gap
        (11, 5, midnight + 20, 1, 4, 3, 6),  # bad units
        (12, 0, midnight + 30, 3, 1, 0, 1),  # unknown stream: skipped only
    ]
    await db.executemany(
        """
        INSERT INTO usage_skipped (chain_id, block_number, log_index, tx_hash, block_time,
                                   stream_id, seq, last_seq, reason)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
        """,
        [(CHAIN, *r[:2], b"\x02" * 32, *r[2:]) for r in skipped],
    )

    rows = await db.fetch("SELECT * FROM keeper.usage_daily ORDER BY stream_id, day")

    got = [
        (
            int(r["stream_id"]),
            r["day"],
            r["reports"],
            int(r["units"]),
            int(r["charged"]),
            int(r["fee"]),
            int(r["payee_credited"]),
            int(r["shortfall"]),
            opt_int(r["last_seq"]),
            r["skipped"],
            r["skipped_replay"],
            r["skipped_gap"],
            r["skipped_bad_units"],
            r["skipped_not_open"],
            r["last_block"],
        )
        for r in rows
    ]
    assert got == [
        (1, date(2023, 11, 14), 1, 10, 1_000, 25, 975, 0, 1, 0, 0, 0, 0, 0, 10),
        (1, date(2023, 11, 15), 2, 12, 800, 19, 781, 400, 3, 3, 1, 1, 1, 0, 11),
        (2, date(2023, 11, 15), 1, 1, 100, 2, 98, 0, 1, 0, 0, 0, 0, 0, 11),
        (3, date(2023, 11, 15), 0, 0, 0, 0, 0, 0, None, 1, 0, 0, 0, 1, 12),
    ]
    assert all(r["chain_id"] == CHAIN for r in rows)


# ------------------------------------------------------------------ ledger and vault


async def test_payee_ledger_shows_credit_and_claim_history(db: asyncpg.Connection) -> None:
    await put_fee(db, 250)  # fee recipient: OTHER
    await db.executemany(
        "INSERT INTO payee_ledger (chain_id, account, credited, first_block)"
        " VALUES ($1, $2, $3, $4)",
        [(CHAIN, PAYEE, 1_234, 5), (CHAIN, OTHER, 31, 5), (OTHER_CHAIN, PAYEE, 7, 2)],
    )
    await db.executemany(
        """
        INSERT INTO claimed (chain_id, block_number, log_index, tx_hash, block_time, payee,
                             amount)
        VALUES ($1, $2, $3, $4, $5, $6, $7)
        """,
        [
            (CHAIN, 6, 0, b"\x03" * 32, T0 + 60, PAYEE, 500),
            (CHAIN, 9, 2, b"\x04" * 32, T0 + 120, PAYEE, 2**80),
            (OTHER_CHAIN, 3, 0, b"\x05" * 32, T0 + 999, PAYEE, 1),  # other chain: not counted
        ],
    )

    rows = await db.fetch(
        "SELECT * FROM keeper.payee_ledger WHERE chain_id = $1 ORDER BY account", CHAIN
    )

    assert [r["account"] for r in rows] == [hex_of(OTHER), hex_of(PAYEE)]
    fee_account, payee = rows
    assert int(fee_account["credited"]) == 31
    assert fee_account["fee_recipient"] is True
    assert int(fee_account["total_claimed"]) == 0
    assert fee_account["claims"] == 0
    assert fee_account["last_claim_time"] is None
    assert int(payee["credited"]) == 1_234
    assert payee["fee_recipient"] is False
    assert int(payee["total_claimed"]) == 500 + 2**80
    assert payee["claims"] == 2
    assert (payee["last_claim_block"], payee["last_claim_at"]) == (9, T0 + 120)
    assert payee["last_claim_time"] == at(T0 + 120)
    assert payee["first_block"] == 5

    other = await db.fetchrow(
        "SELECT fee_recipient, total_claimed FROM keeper.payee_ledger WHERE chain_id = $1",
        OTHER_CHAIN,
    )
    assert other is not None
    assert other["fee_recipient"] is False  # no contract_params for that chain
    assert int(other["total_claimed"]) == 1


# -------------------------------------------------------------- indexer status, reorgs


async def test_indexer_status_lag_and_reorg_summary(db: asyncpg.Connection) -> None:
    await db.execute("INSERT INTO chains (chain_id, name) VALUES ($1, 'anvil')", CHAIN)
    wall = int(datetime.now(UTC).timestamp())
    indexed_ts = wall - 100
    await db.execute(
        """
        INSERT INTO ingest_cursor (chain_id, start_block, indexed_block, indexed_hash,
                                   indexed_timestamp, head_block, head_timestamp,
                                   finalized_block, backfill_done)
        VALUES ($1, 5, 1000, $2, $3, 1012, $4, 968, true)
        """,
        CHAIN,
        b"\xee" * 32,
        indexed_ts,
        indexed_ts + 24,
    )
    await db.execute(
        "INSERT INTO ingest_cursor (chain_id, start_block, indexed_block) VALUES ($1, 0, -1)",
        OTHER_CHAIN,
    )
    detected = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    await db.executemany(
        """
        INSERT INTO reorgs (chain_id, detected_at, depth, ancestor_block, old_head_block,
                            old_head_hash, new_head_block, new_head_hash)
        VALUES ($1, $2, $3, 0, 0, $4, 0, $4)
        """,
        [
            (CHAIN, detected, 3, b"\x00" * 32),
            (CHAIN, detected + timedelta(hours=1), 2, b"\x00" * 32),
            (CHAIN, detected - timedelta(hours=1), 9, b"\x00" * 32),
        ],
    )

    row = await db.fetchrow("SELECT * FROM keeper.indexer_status WHERE chain_id = $1", CHAIN)

    assert row is not None
    assert row["chain_name"] == "anvil"
    assert (row["start_block"], row["head_block"], row["indexed_block"]) == (5, 1012, 1000)
    assert row["finalized_block"] == 968
    assert row["indexed_hash"] == "0x" + "ee" * 32
    assert row["head_timestamp"] == indexed_ts + 24
    assert row["head_time"] == at(indexed_ts + 24)
    assert row["indexed_time"] == at(indexed_ts)
    assert row["lag_blocks"] == 12
    assert row["lag_seconds"] == 24
    assert 100 <= row["wall_lag_seconds"] <= 160  # the test's own duration as slack
    assert row["unfinalized_blocks"] == 32
    assert row["backfill_done"] is True
    assert row["reorgs_total"] == 3
    assert row["last_reorg_at"] == detected + timedelta(hours=1)
    assert row["last_reorg_depth"] == 2
    assert row["max_reorg_depth"] == 9

    fresh = await db.fetchrow(
        "SELECT * FROM keeper.indexer_status WHERE chain_id = $1", OTHER_CHAIN
    )
    assert fresh is not None
    assert fresh["chain_name"] is None
    assert fresh["lag_blocks"] is None  # no head observed yet
    assert fresh["wall_lag_seconds"] is None
    assert fresh["backfill_done"] is False
    assert fresh["reorgs_total"] == 0
    assert fresh["last_reorg_at"] is None
    assert fresh["last_reorg_depth"] is None


async def test_reorgs_view_shows_hashes_as_hex(db: asyncpg.Connection) -> None:
    old_hash, new_hash = bytes(range(32)), bytes(range(32, 64))
    await db.execute(
        """
        INSERT INTO reorgs (chain_id, depth, ancestor_block, old_head_block, old_head_hash,
                            new_head_block, new_head_hash, events_removed)
        VALUES ($1, 2, 98, 100, $2, 101, $3, 17), ($1, 1, 120, 121, $2, NULL, NULL, 0)
        """,
        CHAIN,
        old_hash,
        new_hash,
    )

    rows = await db.fetch("SELECT * FROM keeper.reorgs ORDER BY id")

    first, second = rows
    assert first["chain_id"] == CHAIN
    assert (first["depth"], first["ancestor_block"], first["old_head_block"]) == (2, 98, 100)
    assert first["old_head_hash"] == "0x" + old_hash.hex()
    assert first["old_head_hash"] == "0x000102030405060708090a0b0c0d0e0f" + (
        "101112131415161718191a1b1c1d1e1f"
    )
    assert (first["new_head_block"], first["new_head_hash"]) == (101, "0x" + new_hash.hex())
    assert first["events_removed"] == 17
    assert isinstance(first["detected_at"], datetime)
    assert (second["new_head_block"], second["new_head_hash"]) == (None, None)
