"""What the transaction manager logs, against a real anvil and Postgres: the hash of every send
the node takes, an intent named by its key in every event, signers as checksummed addresses,
and `tx_pass`'s `sent` counting every send that went out (a bump's included)."""

from __future__ import annotations

from collections.abc import MutableMapping, Sequence
from typing import Any

import pytest
from eth_utils import is_checksum_address
from structlog.testing import capture_logs

from tests.support.tx import Env

pytestmark = pytest.mark.anyio

KEY = "settle:logged"


async def _hashes(env: Env, intent: int) -> list[str]:
    async with env.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT tx_hash FROM attempts WHERE intent_id = $1 ORDER BY id", intent
        )
    return ["0x" + bytes(r["tx_hash"]).hex() for r in rows]


def _named(logs: Sequence[MutableMapping[str, Any]], event: str) -> list[MutableMapping[str, Any]]:
    return [e for e in logs if e["event"] == event]


async def test_each_send_is_logged_with_its_hash_and_counted(env: Env) -> None:
    env.automine(False)
    intent = await env.plan(KEY)
    with capture_logs() as first:
        report = await env.manager.tick()
    assert (report.assigned, report.sent, report.refused) == (1, 1, 0)
    (assigned,) = _named(first, "intent_assigned")
    assert assigned["intent"] == KEY
    assert is_checksum_address(assigned["signer"])
    assert assigned["signer"] in {s.address for s in env.signers}
    (sent,) = _named(first, "tx_broadcast")
    assert (sent["intent"], [sent["tx_hash"]]) == (KEY, await _hashes(env, intent))

    # The base fee jumps over the attempt's fee cap: a bump replaces it, and that send counts.
    async with env.pool.acquire() as conn:
        fee = await conn.fetchval("SELECT max_fee FROM attempts WHERE intent_id = $1", intent)
    for _ in range(2):
        env.node.set_next_base_fee(2 * int(fee))
        env.mine()
    with capture_logs() as second:
        report = await env.manager.tick()
    assert (report.bumped, report.sent) == (1, 1)
    (bumped,) = _named(second, "attempt_bumped")
    assert bumped["intent"] == KEY and "intent_id" not in bumped
    hashes = await _hashes(env, intent)
    assert len(hashes) == 2
    (resent,) = _named(second, "tx_broadcast")
    assert (resent["intent"], resent["tx_hash"]) == (KEY, hashes[1])

    # Every event of both passes that names an intent names it by its key, in one field.
    for entry in first + second:
        assert "intent_id" not in entry and "key" not in entry, entry
        if "intent" in entry:
            assert entry["intent"] == KEY, entry
