"""The effective finalized block, on a node whose `finalized` tag is the head.

Hardhat's node and Ganache answer the `finalized` block tag with the latest block. Taken as it
is, every reorg looked deeper than finality (exit 3, again after a restart), intents were final
at `confirmations` depth, and the indexer re-entered backfill on every block. The keeper takes
the lower of the tag and head - `finality_depth`. Real anvil behind `RpcProxy` answering the tag
with the head, as those nodes do.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from structlog.testing import capture_logs

from keeper import metrics
from keeper.chain.rpc import ChainClient, effective_finalized
from keeper.config import IngestConfig
from keeper.dev.anvil import Anvil
from tests.support.ingest import (
    Driver,
    index_until_caught_up,
    open_indexer,
    reorg_rows,
)
from tests.support.rpc_proxy import RpcProxy

pytestmark = pytest.mark.anyio

DEPTH = 8
SETTINGS = IngestConfig(poll_interval=0.05, recheck_delay=0.0, finality_depth=DEPTH)


@pytest.mark.parametrize(
    ("tag", "head", "depth", "expected"),
    [
        (1000, 1000, 64, 936),  # the tag is the head (Hardhat, Ganache): head - depth
        (936, 1000, 64, 936),  # anvil: the tag is head - 64
        (900, 1000, 64, 900),  # a tag further back (Ethereum after the merge) counts
        (None, 1000, 64, 936),  # no tag at all
        (1000, 1000, 0, 1000),  # depth 0: trust the tag
        (5, 10, 64, -1),  # a chain shorter than the depth: nothing final yet
        (None, 10, 64, -1),
    ],
)
def test_the_effective_finalized_block(
    tag: int | None, head: int, depth: int, expected: int
) -> None:
    assert effective_finalized(tag, head, depth) == expected


async def test_a_reorg_under_a_finalized_tag_at_the_head_is_ordinary(
    anvil_factory: Callable[..., Anvil], database_url: str
) -> None:
    driver = Driver(anvil_factory(), random.Random(12))
    for _ in range(4):
        driver.act(3)
    driver.mine(DEPTH + 4)
    with RpcProxy(driver.url, finalized_is_head=True) as proxy:
        async with open_indexer(proxy.url, database_url, driver.target, SETTINGS) as indexer:
            await index_until_caught_up(indexer)
            client = ChainClient(proxy.url)
            try:
                head = await client.head()
                # The node says its head is final; the keeper holds DEPTH blocks back.
                assert (await client.header("finalized")).number == head.number  # type: ignore[union-attr]
                assert await client.finalized(head, DEPTH) == head.number - DEPTH
            finally:
                await client.close()
            async with indexer.pool.acquire() as conn:
                cursor = await indexer.store.cursor(conn, indexer.start_block)
            assert cursor.finalized_block == head.number - DEPTH

            # New blocks are followed one by one, not backfilled again block by block.
            with capture_logs() as logs:
                for _ in range(3):
                    driver.act(2)
                    await index_until_caught_up(indexer)
            assert not [e for e in logs if e["event"] == "backfill_started"]

            # A reorg of 3 blocks is an ordinary one: rolled back and recorded, not fatal.
            driver.reorg(3, 4)
            await index_until_caught_up(indexer)
            async with indexer.pool.acquire() as conn:
                rows = await reorg_rows(conn, driver.chain_id)
            assert [r["depth"] for r in rows] == [3]


async def test_a_finalized_block_at_the_head_re_enters_backfill_quietly(
    anvil_factory: Callable[..., Anvil], database_url: str
) -> None:
    """With finality_depth 0 on a node whose finalized tag is its head, every new block is a
    backfill run: logged once at info, then counted and logged at debug (not two info lines a
    block)."""
    driver = Driver(anvil_factory(), random.Random(13))
    driver.act(3)
    settings = IngestConfig(poll_interval=0.05, recheck_delay=0.0, finality_depth=0)
    with RpcProxy(driver.url, finalized_is_head=True) as proxy:
        async with open_indexer(proxy.url, database_url, driver.target, settings) as indexer:
            runs = metrics.REGISTRY.get_sample_value("keeper_backfill_runs_total") or 0.0
            with capture_logs() as logs:
                await index_until_caught_up(indexer)
                for _ in range(3):
                    driver.act(2)
                    await index_until_caught_up(indexer)
    started = [e for e in logs if e["event"] == "backfill_started"]
    assert len(started) >= 4  # the first run, and one each time new blocks came
    assert [e["log_level"] for e in started] == ["info"] + ["debug"] * (len(started) - 1)
    progress = [e["log_level"] for e in logs if e["event"] == "backfill_progress"]
    assert progress.count("info") <= 1
    after = metrics.REGISTRY.get_sample_value("keeper_backfill_runs_total") or 0.0
    assert after - runs == len(started)
