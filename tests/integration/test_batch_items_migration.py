"""Migration 0015 against a real PostgreSQL: the items and outcomes an outbox held as JSON
(`intents.items`) and text (`intent_items`) become typed `batch_items` rows, nothing lost."""

from __future__ import annotations

from decimal import Decimal

import pytest

from keeper import db, resources
from keeper.db.migrations import migrate

pytestmark = pytest.mark.anyio

CHAIN = 31337
TARGET = b"\x07" * 20


async def test_0015_moves_items_and_outcomes_into_typed_rows(
    empty_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    shipped = resources.migration_files()
    before = [(name, sql) for name, sql in shipped if name < "0015"]
    through = [(name, sql) for name, sql in shipped if name < "0016"]
    assert len(before) == len(through) - 1, "0015 is one migration"
    monkeypatch.setattr(resources, "migration_files", lambda: before)
    await migrate(empty_database_url)

    conn = await db.connect(empty_database_url)
    try:

        async def intent(kind: str, key: str, items: str, state: str = "failed") -> int:
            return int(
                await conn.fetchval(
                    "INSERT INTO intents (chain_id, kind, key, target, calldata, items, state,"
                    " reason) VALUES ($1, $2, $3, $4, '\\x00', $5::jsonb, $6, 'test') RETURNING id",
                    CHAIN,
                    kind,
                    key,
                    TARGET,
                    items,
                    state,
                )
            )

        settle = await intent("settle", "s", "[3, 1, 2]")
        refund = await intent("refund", "r", "[9]", "planned")
        # A usage item of three fields was planned before endpoints existed.
        usage = await intent("usage", "u", "[[5, 10, 1], [5, 7, 2, 4]]")
        purge = await intent("purge", "p", "[]")
        await conn.executemany(
            "INSERT INTO intent_items (intent_id, item, outcome, detail) VALUES ($1, $2, $3, $4)",
            [
                (settle, "3", "effect", None),
                (settle, "1", "skipped", "nothing due"),
                # Taken out of the batch when its simulation reverted: no longer in items.
                (settle, "8", "reverted", "Paused()"),
                (usage, "5:2", "effect", None),
                (usage, "6:1", "reverted", "unknown stream"),
            ],
        )
    finally:
        await conn.close()

    monkeypatch.setattr(resources, "migration_files", lambda: through)
    assert await migrate(empty_database_url) == [through[-1][0]]

    conn = await db.connect(empty_database_url)
    try:
        rows = await conn.fetch(
            "SELECT intent_id, position, kind, entity, seq, units, endpoint, outcome, detail"
            " FROM batch_items ORDER BY intent_id, position"
        )
        in_flight = await conn.fetch("SELECT kind, item, seq FROM keeper.items_in_flight")
        counts = await conn.fetch("SELECT intent_id, items FROM keeper.tx_pipeline")
    finally:
        await conn.close()

    d = Decimal
    assert [tuple(r.values()) for r in rows] == [
        (settle, 0, "settle", d(3), None, None, None, "effect", None),
        (settle, 1, "settle", d(1), None, None, None, "skipped", "nothing due"),
        (settle, 2, "settle", d(2), None, None, None, None, None),
        (settle, 3, "settle", d(8), None, None, None, "reverted", "Paused()"),
        (refund, 0, "refund", d(9), None, None, None, None, None),
        (usage, 0, "usage", d(5), d(1), d(10), d(0), None, None),
        (usage, 1, "usage", d(5), d(2), d(7), d(4), "effect", None),
        (usage, 2, "usage", d(6), d(1), None, None, "reverted", "unknown stream"),
    ]
    # Only the planned refund is on its way; the item column is the escrow id, typed.
    assert [tuple(r.values()) for r in in_flight] == [("refund", d(9), None)]
    # Items still in their batches (the reverted ones left out), 0 for a single call.
    assert {r["intent_id"]: r["items"] for r in counts} == {
        settle: 3,
        refund: 1,
        usage: 2,
        purge: 0,
    }
