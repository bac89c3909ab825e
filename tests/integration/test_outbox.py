"""The outbox's guarantees as the database enforces them."""

from __future__ import annotations

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
