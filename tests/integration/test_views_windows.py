"""The operator views of migration 0008 against a real anvil chain, indexer and PostgreSQL:
the refund intent of each expired escrow, usage per day split by the keeper's labels, and the
settlement totals over windows of chain time with the keeper's batch item outcomes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from eth_utils import to_checksum_address
from web3.contract import Contract

from keeper.config import PlanConfig
from keeper.db import Conn
from keeper.dev.anvil import rpc
from keeper.ops.deploy import contract
from keeper.plan.accrual import carry_fee
from keeper.plan.planner import Planner
from tests.support.ingest import Target, index_until_caught_up, open_indexer
from tests.support.tx import Env

pytestmark = pytest.mark.anyio

PAYEE_A = to_checksum_address("0x" + "a1" * 20)
PAYEE_B = to_checksum_address("0x" + "b2" * 20)
SETTINGS = PlanConfig(
    settle_min_amount=100_000, settle_max_interval=3_600, settle_horizon=600, backoff_seconds=60
)
WINDOWS = [
    ("10m", 600),
    ("1h", 3_600),
    ("6h", 21_600),
    ("12h", 43_200),
    ("24h", 86_400),
    ("7d", 604_800),
    ("30d", 2_592_000),
]
DAY = 86_400


def send(fn: Any, sender: str) -> str:
    params: Any = {"from": sender}
    return str(fn.transact(params).hex())


def contracts(env: Env) -> tuple[Contract, Contract, Contract]:
    d = env.deployment
    return (
        contract(env.w3, "TestToken", d.token),
        contract(env.w3, "StreamManager", d.stream_manager),
        contract(env.w3, "EscrowVault", d.escrow_vault),
    )


def fund(env: Env) -> None:
    """Tokens for the deployer (payer, oracle and vault admin), approved to both contracts."""
    d = env.deployment
    token, _, _ = contracts(env)
    send(token.functions.mint(d.deployer, 10**15), d.deployer)
    send(token.functions.approve(d.stream_manager, 2**256 - 1), d.deployer)
    send(token.functions.approve(d.escrow_vault, 2**256 - 1), d.deployer)


def report(stream_id: int, seq: int, units: int, endpoint: int = 0) -> int:
    """One packed usage report of `recordUsage`."""
    return stream_id | seq << 64 | endpoint << 96 | units << 128


def fees_of(amounts: list[int], bps: int) -> list[int]:
    """The fees of one payee's items in order: the remainder carries from item to item."""
    out, remainder = [], 0
    for amount in amounts:
        fee, remainder = carry_fee(amount, bps, remainder)
        out.append(fee)
    return out


def latest_time(env: Env) -> int:
    return int(env.w3.eth.get_block("latest")["timestamp"])


def mine_at(env: Env, timestamp: int) -> None:
    rpc(env.node.url, "anvil_setNextBlockTimestamp", [timestamp])
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


def planner(env: Env) -> Planner:
    d = env.deployment
    return Planner(
        d.chain_id, stream_manager=d.stream_manager, escrow_vault=d.escrow_vault, settings=SETTINGS
    )


async def columns(conn: Conn, view: str) -> list[str]:
    statement = await conn.prepare(f"SELECT * FROM keeper.{view}")  # noqa: S608 - fixed names
    return [a.name for a in statement.get_attributes()]


# ---------------------------------------------------------------------- escrows_expired


async def test_escrows_expired_shows_the_refund_intent_that_carries_it(
    env: Env, database_url: str
) -> None:
    d = env.deployment
    _, _, vault = contracts(env)
    fund(env)
    send(vault.functions.deposit(10**9), d.deployer)
    send(vault.functions.createEscrow(PAYEE_A, 1_000, 100), d.deployer)  # 1: expires
    send(vault.functions.createEscrow(PAYEE_B, 2_000, 100), d.deployer)  # 2: expires
    send(vault.functions.createEscrow(PAYEE_B, 4_000, 100_000), d.deployer)  # 3: not yet
    rpc(env.node.url, "evm_increaseTime", [200])
    env.mine()
    await index(env, database_url)
    p = planner(env)
    async with env.pool.acquire() as conn:
        await p.store_settings(conn)
        # An earlier refund of escrow 1 failed: it is shown until a newer intent holds it.
        old_id = await conn.fetchval(
            """
            INSERT INTO intents (chain_id, kind, key, target, calldata, state, reason)
            VALUES ($1, 'refund', 'refund-old', $2, '\\x00', 'failed', 'reverted')
            RETURNING id
            """,
            d.chain_id,
            bytes.fromhex(d.escrow_vault[2:]),
        )
        await conn.execute(
            "INSERT INTO batch_items (intent_id, position, chain_id, kind, entity)"
            " VALUES ($1, 0, $2, 'refund', 1)",
            old_id,
            d.chain_id,
        )
        before = await conn.fetch("SELECT * FROM keeper.escrows_expired ORDER BY escrow_id")
        assert [
            (int(r["escrow_id"]), r["refund_intent_id"], r["refund_intent_key"], r["refund_state"])
            for r in before
        ] == [(1, old_id, "refund-old", "failed"), (2, None, None, None)]
        assert [r["refund_tx_hash"] for r in before] == [None, None]

        report = await p.plan_pass(conn)

        assert [(b.kind, b.items) for b in report.planned] == [("refund", [1, 2])]
        intent = await conn.fetchrow("SELECT id, key FROM intents WHERE id <> $1", old_id)
        assert intent is not None
        planned = await conn.fetch(
            "SELECT escrow_id, refund_intent_id, refund_intent_key, refund_state, refund_tx_hash"
            " FROM keeper.escrows_expired ORDER BY escrow_id"
        )
        assert [tuple(r.values()) for r in planned] == [
            (Decimal(1), intent["id"], intent["key"], "planned", None),
            (Decimal(2), intent["id"], intent["key"], "planned", None),
        ]
        # The refundable ones are the expired ones not on their way: none now. They keep the
        # columns of escrows_expired (the planner reads two of them by name).
        assert await conn.fetch("SELECT * FROM keeper.escrows_refundable") == []
        assert await columns(conn, "escrows_refundable") == await columns(conn, "escrows_expired")
        assert (await columns(conn, "escrows_expired"))[-5:] == [
            "pending",
            "refund_intent_id",
            "refund_intent_key",
            "refund_state",
            "refund_tx_hash",
        ]

    # Sent and mined, the index not there yet: the escrows are still open, with the hash.
    for _ in range(3):
        await env.manager.tick()
        env.mine()
    async with env.pool.acquire() as conn:
        tx_hash = await conn.fetchval("SELECT tx_hash FROM intents WHERE id = $1", intent["id"])
        sent = await conn.fetch(
            "SELECT refund_state, refund_tx_hash FROM keeper.escrows_expired ORDER BY escrow_id"
        )
    assert tx_hash is not None
    assert [tuple(r.values()) for r in sent] == [("confirmed", "0x" + bytes(tx_hash).hex())] * 2

    # Indexed: refunded, no longer expired-and-open; the effects checked count as successes.
    await index(env, database_url)
    report_after = await env.manager.tick()
    assert report_after.effects_checked == 1
    async with env.pool.acquire() as conn:
        assert await conn.fetch("SELECT * FROM keeper.escrows_expired") == []
        recent = await conn.fetchrow(
            "SELECT * FROM keeper.settlement_totals WHERE chain_id = $1 AND window_name = '10m'",
            d.chain_id,
        )
    assert recent is not None
    assert (recent["refunds"], int(recent["refunded_amount"])) == (2, 3_000)
    assert (recent["items_checked"], recent["items_effect"]) == (2, 2)
    assert recent["success_rate"] == 1


# --------------------------------------------------------------------------- usage_daily


async def put_report(
    conn: Conn,
    chain_id: int,
    stream_id: int,
    seq: int,
    units: int,
    label: str | None,
    *,
    taken: bool = False,
) -> None:
    """A usage row the keeper accepted, as a report with `seq`; `taken`: rejected because
    another oracle used the sequence number first."""
    inbox_id = await conn.fetchval(
        """
        INSERT INTO usage_inbox (chain_id, stream_id, units, producer_key, label, observed_at,
                                 verdict, validated_at)
        VALUES ($1, $2, $3, $4, $5, '1700000000', 'accepted', now())
        RETURNING id
        """,
        chain_id,
        str(stream_id),
        str(units),
        f"key-{seq}",
        label,
    )
    await conn.execute(
        """
        INSERT INTO usage_reports (inbox_id, chain_id, stream_id, seq, units, producer_key,
                                   label, observed_at, state, block_number, tx_hash, reason)
        VALUES ($1, $2, $3, $4, $5, $6, $7, now(),
                CASE WHEN $8 THEN 'rejected' ELSE 'pending' END,
                CASE WHEN $8 THEN 1 END, CASE WHEN $8 THEN '\\x01'::bytea END,
                CASE WHEN $8 THEN 'sequence_taken' END)
        """,
        inbox_id,
        chain_id,
        stream_id,
        seq,
        units,
        f"key-{seq}",
        label,
        taken,
    )


async def test_usage_daily_splits_a_stream_by_the_label_of_the_keepers_reports(
    env: Env, database_url: str
) -> None:
    d = env.deployment
    _, manager, _ = contracts(env)
    fund(env)
    # A fresh UTC day, an hour in: every block of the test falls on it.
    day_start = (latest_time(env) // DAY + 2) * DAY
    mine_at(env, day_start + 3_600)
    send(manager.functions.openStream(PAYEE_A, 1, 10**9), d.deployer)
    send(manager.functions.setUsagePrice(1, 10), d.deployer)
    send(
        manager.functions.recordUsage([report(1, i + 1, u) for i, u in enumerate([3, 5, 7, 11])]),
        d.oracle,
    )
    send(manager.functions.recordUsage([report(1, 2, 5)]), d.oracle)  # replay of seq 2
    await index(env, database_url)
    async with env.pool.acquire() as conn:
        await put_report(conn, d.chain_id, 1, 1, 3, "api")
        await put_report(conn, d.chain_id, 1, 2, 5, "api")
        await put_report(conn, d.chain_id, 1, 3, 7, "compute")
        # Sequence 4 went to another oracle's report: the event is not the keeper's.
        await put_report(conn, d.chain_id, 1, 4, 2, "batch", taken=True)
        rows = await conn.fetch(
            "SELECT * FROM keeper.usage_daily WHERE chain_id = $1 ORDER BY label NULLS LAST",
            d.chain_id,
        )
        assert (await columns(conn, "usage_daily"))[:4] == ["chain_id", "stream_id", "label", "day"]

    f30, f50, f70, f110 = fees_of([30, 50, 70, 110], d.fee_bps)
    got = [
        (
            int(r["stream_id"]),
            r["label"],
            r["day"],
            r["reports"],
            int(r["units"]),
            int(r["charged"]),
            int(r["fee"]),
            int(r["payee_credited"]),
            int(r["last_seq"]),
            r["skipped"],
            r["skipped_replay"],
        )
        for r in rows
    ]
    day = datetime.fromtimestamp(day_start, UTC).date()
    assert got == [
        (1, "api", day, 2, 8, 80, f30 + f50, 80 - f30 - f50, 2, 1, 1),
        (1, "compute", day, 1, 7, 70, f70, 70 - f70, 3, 0, 0),
        (1, None, day, 1, 11, 110, f110, 110 - f110, 4, 0, 0),
    ]


# --------------------------------------------------------------------- settlement_totals

# Ages (seconds before the indexed head) of the money events: on each window's edge (age =
# the window: outside it) and one second inside it, oldest first.
AGES = [age for _, seconds in reversed(WINDOWS) for age in (seconds, seconds - 1)] + [0]
RATE = 3  # stream 1, settled at every age
PRICE = 7  # stream 2, charged by a usage report at every age
USAGE_DEPOSIT = 800  # runs out at the last report: a shortfall


@dataclass
class Money:
    """The money events of one block."""

    age: int
    settled: int
    settled_fee: int
    charged: int
    usage_fee: int
    shortfall: int
    refunded: int


async def test_settlement_totals_count_exactly_the_events_inside_each_window(
    env: Env, database_url: str
) -> None:
    d = env.deployment
    _, manager, vault = contracts(env)
    fund(env)
    send(manager.functions.openStream(PAYEE_A, RATE, 10**12), d.deployer)  # 1: settled
    settled_at = latest_time(env)
    send(manager.functions.openStream(PAYEE_B, 1, USAGE_DEPOSIT), d.deployer)  # 2: charged
    send(manager.functions.setUsagePrice(2, PRICE), d.deployer)
    send(vault.functions.deposit(10**9), d.deployer)
    for i in range(len(AGES)):
        send(vault.functions.createEscrow(PAYEE_A, 1_000 + i, 0), d.deployer)  # i + 1
    head = latest_time(env) + 2_592_000 + 1_000  # the set-up is older than every window

    env.automine(False)
    events: list[Money] = []
    balance = USAGE_DEPOSIT
    for i, age in enumerate(AGES):
        at = head - age
        units = i + 1
        send(manager.functions.settleStreams([1]), d.deployer)
        send(manager.functions.recordUsage([report(2, i + 1, units)]), d.oracle)
        send(vault.functions.refundEscrow(i + 1), d.deployer)  # the vault admin: at any time
        mine_at(env, at)
        settled = RATE * (at - settled_at)
        cost = PRICE * units
        charged = min(cost, balance)
        balance -= charged
        # Stream 1 pays PAYEE_A and stream 2 PAYEE_B: each payee carries its own remainder.
        events.append(Money(age, settled, 0, charged, 0, cost - charged, 1_000 + i))
        settled_at = at
    assert events[-1].shortfall > 0
    settled_fees = fees_of([e.settled for e in events], d.fee_bps)
    usage_fees = fees_of([e.charged for e in events], d.fee_bps)
    for e, settled_fee, usage_fee in zip(events, settled_fees, usage_fees, strict=True):
        e.settled_fee, e.usage_fee = settled_fee, usage_fee
    await index(env, database_url)

    async with env.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT * FROM keeper.settlement_totals WHERE chain_id = $1", d.chain_id
        )
        head_block = await conn.fetchval("SELECT max(block_number) FROM stream_settled")
        assert await conn.fetchval("SELECT count(*) FROM stream_settled") == len(AGES)

    assert [(r["window_name"], r["window_seconds"]) for r in rows] == WINDOWS
    assert {(r["as_of"], r["as_of_block"]) for r in rows} == {(head, head_block)}
    for r in rows:
        inside = [e for e in events if e.age < r["window_seconds"]]
        got = (
            r["settlements"],
            int(r["settled_amount"]),
            int(r["settled_fee"]),
            r["usage_reports"],
            int(r["usage_charged"]),
            int(r["usage_fee"]),
            int(r["usage_shortfall"]),
            r["refunds"],
            int(r["refunded_amount"]),
        )
        assert got == (
            len(inside),
            sum(e.settled for e in inside),
            sum(e.settled_fee for e in inside),
            len(inside),
            sum(e.charged for e in inside),
            sum(e.usage_fee for e in inside),
            sum(e.shortfall for e in inside),
            len(inside),
            sum(e.refunded for e in inside),
        ), r["window_name"]
        # The k-th window holds both events of each smaller window, its own inner one and the
        # head's: its own edge event and everything older are out.
        assert len(inside) == 2 * WINDOWS.index((r["window_name"], r["window_seconds"])) + 2
        # The keeper sent nothing: no items, and no success rate rather than a made-up one.
        assert (r["items_checked"], r["success_rate"]) == (0, None)


async def test_settlement_totals_success_rate_follows_the_item_outcomes(
    db: asyncpg.Connection,
) -> None:
    chain, other, unindexed = 31337, 8453, 10
    for chain_id, timestamp in ((chain, 1_700_000_000), (other, 1_700_000_000), (unindexed, None)):
        await db.execute(
            "INSERT INTO ingest_cursor (chain_id, start_block, indexed_block, indexed_timestamp)"
            " VALUES ($1, 0, $2, $3)",
            chain_id,
            -1 if timestamp is None else 100,
            timestamp,
        )
    intents = {}
    for chain_id in (chain, other, unindexed):
        intents[chain_id] = await db.fetchval(
            """
            INSERT INTO intents (chain_id, kind, key, target, calldata, state, signer,
                                 nonce, tx_hash, block_number, block_hash, receipt_status)
            VALUES ($1, 'settle', 'settle-1', $2, '\\x00', 'final', $2, 0, $3, 90, $3, 1)
            RETURNING id
            """,
            chain_id,
            b"\x07" * 20,
            b"\x08" * 32,
        )
    items = [
        # chain, seconds since checked, outcome
        *[(chain, 300, "effect")] * 3,
        (chain, 300, "skipped"),
        (chain, 7_200, "no_effect"),
        (chain, 7_200, "reverted"),
        *[(chain, 3 * DAY, "effect")] * 2,
        (chain, 40 * DAY, "effect"),  # older than every window
        (other, 60, "reverted"),
        (unindexed, 60, "effect"),
    ]
    await db.executemany(
        "INSERT INTO batch_items (intent_id, position, chain_id, kind, entity, outcome,"
        " checked_at) VALUES ($1, $2, $3, 'settle', $2::integer, $4,"
        " now() - make_interval(secs => $5))",
        [(intents[c], n, c, outcome, age) for n, (c, age, outcome) in enumerate(items)],
    )

    rows = await db.fetch(
        "SELECT * FROM keeper.settlement_totals ORDER BY chain_id, window_seconds"
    )

    got = {
        (r["chain_id"], r["window_name"]): (
            r["items_checked"],
            r["items_effect"],
            r["items_skipped"],
            r["items_no_effect"],
            r["items_reverted"],
            r["success_rate"],
        )
        for r in rows
    }
    recent, hours, days = (4, 3, 1, 0, 0), (6, 3, 1, 1, 1), (8, 5, 1, 1, 1)
    expected = {
        "10m": recent,
        "1h": recent,
        "6h": hours,
        "12h": hours,
        "24h": hours,
        "7d": days,
        "30d": days,
    }
    assert {k: v[:5] for k, v in got.items() if k[0] == chain} == {
        (chain, name): counts for name, counts in expected.items()
    }
    rates = [got[(chain, name)][5] for name, _ in WINDOWS]
    assert rates == [Decimal("0.75")] * 2 + [Decimal("0.5")] * 3 + [Decimal("0.625")] * 2
    assert got[(other, "10m")] == (1, 0, 0, 0, 1, 0)
    # Without chain time a chain has no windows yet.
    assert {c for c, _ in got} == {chain, other}
    # Money totals are zero, not NULL, on a chain with no events.
    assert {(r["settlements"], r["settled_amount"], r["refunds"]) for r in rows} == {(0, 0, 0)}
