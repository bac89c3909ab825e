"""The outbox's guarantees as the database enforces them."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from keeper.db.outbox import AlreadyPlanned, IntentRequest, Outbox, Planned
from keeper.db.queries import load_queries

pytestmark = pytest.mark.anyio

CHAIN = 31337
SIGNER = b"\x11" * 20
TARGET = "0x" + "22" * 20
Q = load_queries("outbox.sql")


def request(key: str, kind: str = "settle") -> IntentRequest:
    return IntentRequest(kind=kind, key=key, target=TARGET, calldata=b"\x01\x02", items=[1, 2])


async def test_a_key_is_planned_once(db: asyncpg.Connection) -> None:
    outbox = Outbox(CHAIN)
    first = await outbox.plan(db, request("settle:1"))
    again = await outbox.plan(db, request("settle:1"))
    assert isinstance(first, Planned)
    assert again == AlreadyPlanned(first.intent_id, "settle:1", "planned")
    assert await db.fetchval("SELECT count(*) FROM intents") == 1
    # The same key on another chain is another intent.
    other = await Outbox(CHAIN + 1).plan(db, request("settle:1"))
    assert isinstance(other, Planned)


async def test_a_pass_plans_all_its_requests_at_once_as_one_by_one(
    db: asyncpg.Connection,
) -> None:
    """plan_all writes every intent of a pass in one statement: the outcomes, ids (ascending in
    request order), columns and items are those that planning each request in turn gives,
    with a key planned before (in any state) and a key repeated within the pass."""

    def reqs(prefix: str) -> list[IntentRequest]:
        return [
            IntentRequest("settle", f"{prefix}:a", TARGET, b"\x0a", items=[7, 3], urgent=True),
            IntentRequest("usage", f"{prefix}:old", TARGET, b"\x0b", items=[[5, 10, 1, 2]]),
            IntentRequest("refund", f"{prefix}:b", TARGET, b"\x0c", items=[9], value=2**200),
            IntentRequest("settle", f"{prefix}:a", TARGET, b"\x0d", items=[8]),
            IntentRequest(
                "usage", f"{prefix}:c", "0x" + "33" * 20, b"", items=[[5, 10, 2, 0], [6, 1, 4]]
            ),
            IntentRequest("call", f"{prefix}:d", TARGET, b"\x0e"),
        ]

    async def run(chain: int, at_once: bool) -> tuple[list[Any], list[Any], list[Any]]:
        outbox = Outbox(chain)
        old = await outbox.plan(db, reqs(f"{chain}")[1])
        assert isinstance(old, Planned)
        await db.execute(
            "UPDATE intents SET state = 'failed', reason = 'x' WHERE id = $1", old.intent_id
        )
        if at_once:
            outcomes = await outbox.plan_all(db, reqs(f"{chain}"))
        else:
            outcomes = [await outbox.plan(db, r) for r in reqs(f"{chain}")]
        base = old.intent_id
        shown = [
            (type(o).__name__, o.intent_id - base, o.key.split(":")[1], getattr(o, "state", None))
            for o in outcomes
        ]
        intents = [
            (
                r["id"] - base,
                r["kind"],
                r["key"].split(":")[1],
                bytes(r["target"]),
                bytes(r["calldata"]),
                int(r["value"]),
                r["urgent"],
                r["state"],
            )
            for r in await db.fetch("SELECT * FROM intents WHERE chain_id = $1 ORDER BY id", chain)
        ]
        items = [
            (
                r["intent_id"] - base,
                r["position"],
                r["kind"],
                r["entity"],
                r["seq"],
                r["units"],
                r["endpoint"],
                r["outcome"],
            )
            for r in await db.fetch(
                "SELECT * FROM batch_items WHERE chain_id = $1 ORDER BY intent_id, position", chain
            )
        ]
        return shown, intents, items

    at_once, one_by_one = await run(CHAIN + 10, True), await run(CHAIN + 20, False)
    assert at_once == one_by_one
    outcomes, intents, items = at_once
    # Ids relative to the intent planned before; a request whose key conflicts takes an id from
    # the sequence too (as it does one by one), so there are gaps.
    assert outcomes == [
        ("Planned", 1, "a", None),
        ("AlreadyPlanned", 0, "old", "failed"),
        ("Planned", 3, "b", None),
        ("AlreadyPlanned", 1, "a", "planned"),
        ("Planned", 5, "c", None),
        ("Planned", 6, "d", None),
    ]
    assert [i[:3] for i in intents] == [
        (0, "usage", "old"),
        (1, "settle", "a"),
        (3, "refund", "b"),
        (5, "usage", "c"),
        (6, "call", "d"),
    ]
    assert intents[1][4:7] == (b"\x0a", 0, True) and intents[2][5] == 2**200
    assert intents[3][3] == b"\x33" * 20 and intents[4][7] == "planned"
    assert items == [
        (0, 0, "usage", 5, 1, 10, 2, None),
        (1, 0, "settle", 7, None, None, None, None),
        (1, 1, "settle", 3, None, None, None, None),
        (3, 0, "refund", 9, None, None, None, None),
        (5, 0, "usage", 5, 2, 10, 0, None),
        (5, 1, "usage", 6, 4, 1, 0, None),
    ]
    assert await Outbox(CHAIN).plan_all(db, []) == []


async def test_bad_requests_are_refused_before_the_database() -> None:
    with pytest.raises(ValueError, match="kind"):
        IntentRequest(kind="nope", key="k", target=TARGET, calldata=b"")
    with pytest.raises(ValueError, match="key"):
        IntentRequest(kind="settle", key="", target=TARGET, calldata=b"")


async def _assigned(db: asyncpg.Connection, key: str, nonce: int) -> int:
    planned = await Outbox(CHAIN).plan(db, request(key))
    assert isinstance(planned, Planned)
    await db.execute(Q["assign_intent"], planned.intent_id, SIGNER, nonce, 100_000)
    return planned.intent_id


async def test_illegal_transitions_are_refused(db: asyncpg.Connection) -> None:
    planned = await Outbox(CHAIN).plan(db, request("k"))
    assert isinstance(planned, Planned)
    with pytest.raises(asyncpg.CheckViolationError, match="planned -> confirmed"):
        await db.execute("UPDATE intents SET state = 'confirmed' WHERE id = $1", planned.intent_id)
    await db.execute(Q["assign_intent"], planned.intent_id, SIGNER, 0, 100_000)
    with pytest.raises(asyncpg.CheckViolationError, match="pinned"):
        await db.execute("UPDATE intents SET nonce = 5 WHERE id = $1", planned.intent_id)
    # mined needs the receipt's fields
    with pytest.raises(asyncpg.CheckViolationError):
        await db.execute("UPDATE intents SET state = 'mined' WHERE id = $1", planned.intent_id)
    await db.execute(
        Q["mark_mined"], planned.intent_id, b"\x01" * 32, 10, b"\x02" * 32, 1, 21_000, 7, None
    )
    await db.execute(Q["mark_confirmed"], planned.intent_id)
    await db.execute(Q["mark_final"], planned.intent_id)
    # A pass that read it as confirmed cannot take it back: final is final.
    assert await db.execute(Q["unmine"], planned.intent_id, "confirmed") == "UPDATE 0"
    with pytest.raises(asyncpg.CheckViolationError, match="final -> assigned"):
        await db.execute("UPDATE intents SET state = 'assigned' WHERE id = $1", planned.intent_id)


async def test_one_live_intent_per_signer_nonce(db: asyncpg.Connection) -> None:
    stuck = await _assigned(db, "a", nonce=3)
    with pytest.raises(asyncpg.UniqueViolationError):
        await _assigned(db, "b", nonce=3)
    # Purging: the stuck intent goes back to be planned again and gives its nonce to the purge.
    await db.execute(Q["mark_replan"], stuck, "purged: stuck")
    purge = await _assigned(db, "purge:3", nonce=3)
    assert purge != stuck
    assert await Outbox(CHAIN).next_nonce(db, SIGNER) == 4


async def test_signed_bytes_are_immutable(db: asyncpg.Connection) -> None:
    intent = await _assigned(db, "k", nonce=0)
    attempt = await db.fetchval(
        Q["insert_attempt"], intent, CHAIN, SIGNER, 0, 100, 2, False, 21_000, b"raw", b"\x09" * 32
    )
    with pytest.raises(asyncpg.CheckViolationError, match="immutable"):
        await db.execute("UPDATE attempts SET raw = 'other' WHERE id = $1", attempt)
    with pytest.raises(asyncpg.CheckViolationError, match="signed -> mined"):
        await db.execute("UPDATE attempts SET state = 'mined' WHERE id = $1", attempt)
    await db.execute(Q["mark_broadcast"], attempt, 5, None, None)
    row = await db.fetchrow("SELECT state, broadcasts, broadcast_block FROM attempts")
    assert row is not None and tuple(row) == ("broadcast", 1, 5)


async def test_in_flight_counts_per_signer(db: asyncpg.Connection, database_url: str) -> None:
    for n in range(3):
        await _assigned(db, f"k{n}", nonce=n)
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
    try:
        assert await Outbox(CHAIN, pool).in_flight() == {SIGNER: 3}
    finally:
        await pool.close()
    assert await Outbox(CHAIN).next_nonce(db, b"\x33" * 20) == 0
