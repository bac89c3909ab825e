"""StreamManager v2 on a real anvil chain: random activity heavy in price lists, price changes
with notice, closing streams and usage per endpoint, indexed and checked against the contracts
(projections, `keeper verify`), with corruptions of the new projections named by verify."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from keeper import db as keeper_db
from keeper.chain.rpc import ChainClient
from keeper.dev.anvil import Anvil
from keeper.ops.verify import verify
from tests.support.ingest import (
    Driver,
    assert_states_equal,
    contract_state,
    index_until_caught_up,
    open_indexer,
    projection_state,
)

pytestmark = pytest.mark.anyio

BILLING = (
    "open",
    "set_price",
    "add_endpoint",
    "set_endpoint_price",
    "usage",
    "close",
    "settle",
    "top_up",
)


async def test_billing_activity_indexes_and_verifies(
    anvil_factory: Callable[..., Anvil], database_url: str
) -> None:
    rng = random.Random(13)
    driver = Driver(anvil_factory(), rng, notice_period=60)
    for _ in range(3):
        driver.act(4, seconds=1, only=("open", "add_endpoint"))
    m, payer = driver.manager, driver.payers[0]
    sid = int(m.functions.nextStreamId().call())
    driver.send([driver.tx("open", m, "openStream", [driver.payees[0], 1, 10**9], payer)])
    driver.mine(seconds=1)
    driver.send([driver.tx("price", m, "setUsagePrice", [sid, 500], payer)])
    driver.mine(seconds=1)
    async with open_indexer(driver.url, database_url, driver.target) as indexer:
        seen: dict[str, int] = {}
        for i in range(14):
            if i % 5 == 2:  # a decrease: waits for the notice period
                driver.send([driver.tx("lower", m, "setUsagePrice", [sid, 500 - i], payer)])
            driver.act(rng.randint(2, 6), seconds=rng.choice([0, 1, 20, 45, 90]), only=BILLING)
            await index_until_caught_up(indexer)
            async with indexer.pool.acquire() as conn:
                indexed = await projection_state(conn, driver.chain_id)
                for kind, n in await conn.fetch(
                    "SELECT kind, count(*) FROM keeper.pending_terms GROUP BY kind"
                ):
                    seen[kind] = seen.get(kind, 0) + n
            assert_states_equal(indexed, contract_state(driver, indexed.block))
        # The run went through what it is about.
        assert set(seen) == {"close", "stream_price", "endpoint_price"}, seen
        async with indexer.pool.acquire() as conn:
            statuses = {r[0] for r in await conn.fetch("SELECT DISTINCT status FROM streams")}
            assert statuses == {"open", "closing", "closed"}
            assert await conn.fetchval("SELECT count(*) FROM usage_recorded WHERE endpoint > 0")
            assert await conn.fetchval("SELECT bool_or(price_list) FROM streams")

    db = await keeper_db.connect(database_url)
    client = ChainClient(driver.url)
    try:
        report = await verify(db, client, driver.deployment)
        assert report.ok, [d.text() for d in report.differences]
        assert report.streams > 10

        corrupted = await db.fetchrow(
            "UPDATE endpoints SET price = price + 1 WHERE (payee, endpoint) = "
            "(SELECT payee, endpoint FROM endpoints ORDER BY payee, endpoint LIMIT 1) "
            "RETURNING payee, endpoint"
        )
        assert corrupted is not None
        payee, endpoint = corrupted
        await db.execute("UPDATE contract_params SET notice_period = 61")
        closing = await db.fetchval(
            "UPDATE streams SET status = 'open', close_at = NULL WHERE stream_id = "
            "(SELECT min(stream_id) FROM streams WHERE status = 'closing') RETURNING stream_id"
        )
        report = await verify(db, client, driver.deployment)
        found = {(d.kind, d.key, d.field) for d in report.differences}
        assert ("stream", str(closing), "status") in found
        assert ("contract", "StreamManager", "notice_period") in found
        assert any(k == "endpoint" and key.endswith(f"/{endpoint}") for k, key, _ in found), found
        assert bytes(payee).hex() in {d.key.split("/")[0][2:] for d in report.differences}
    finally:
        await client.close()
        await db.close()
