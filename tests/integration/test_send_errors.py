"""keeper.send_errors (0019): the intents whose latest attempt the node refused, read through an
index of refused attempts, equal to what keeper.tx_pipeline's latest_send_error shows; the last
of them is what `keeper status` and /status report."""

from __future__ import annotations

from datetime import timedelta

import asyncpg
import pytest

from keeper.service.status import collect_status

pytestmark = pytest.mark.anyio

CHAIN = 31337
SIGNER = b"\x11" * 20


async def intent(db: asyncpg.Connection, n: int, age: timedelta, errors: list[str | None]) -> int:
    """An assigned intent changed `age` ago with one attempt per entry of `errors` (oldest
    first; None: the node took it)."""
    iid = await db.fetchval(
        "INSERT INTO intents (chain_id, kind, key, target, calldata, state, signer, nonce, "
        "gas_limit, updated_at) VALUES ($1, 'settle', $2, $3, '\\x00', 'assigned', $4, $5, "
        "100000, now() - $6::interval) RETURNING id",
        CHAIN,
        f"settle:{n}",
        b"\x22" * 20,
        SIGNER,
        n,
        age,
    )
    for a, error in enumerate(errors):
        await db.execute(
            "INSERT INTO attempts (intent_id, chain_id, signer, nonce, max_fee, priority_fee, "
            "gas_limit, raw, tx_hash, last_error, last_outcome) "
            "VALUES ($1, $2, $3, $4, 2, 1, 100000, '\\x02', $5, $6, $7)",
            iid,
            CHAIN,
            SIGNER,
            n,
            (n * 100 + a).to_bytes(32, "big"),
            error,
            None if error is None else "unknown",
        )
    return int(iid)


async def test_send_errors_are_the_pipelines_latest_errors(db: asyncpg.Connection) -> None:
    quiet = await intent(db, 1, timedelta(minutes=1), [None])
    await intent(db, 2, timedelta(minutes=5), ["nonce too low", None])  # refused, then taken
    older = await intent(db, 3, timedelta(minutes=9), [None, "replacement underpriced"])
    newest = await intent(db, 4, timedelta(minutes=2), ["insufficient funds", "gas too low"])
    await intent(db, 5, timedelta(minutes=3), [])  # never sent
    view = await db.fetch(
        "SELECT intent_id, kind, key, state, message, updated_at FROM keeper.send_errors "
        "ORDER BY intent_id"
    )
    pipeline = await db.fetch(
        "SELECT intent_id, kind, key, state, latest_send_error AS message, updated_at "
        "FROM keeper.tx_pipeline WHERE latest_send_error IS NOT NULL ORDER BY intent_id"
    )
    assert [tuple(r) for r in view] == [tuple(r) for r in pipeline]
    assert [(r["intent_id"], r["message"]) for r in view] == [
        (older, "replacement underpriced"),
        (newest, "gas too low"),
    ]
    assert quiet not in {r["intent_id"] for r in view}
    last = (await collect_status(db, CHAIN))["last_error"]
    assert (last["source"], last["intent_id"], last["message"]) == (
        "send_error",
        newest,
        "gas too low",
    )
