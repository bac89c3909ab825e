"""`keeper backfill` against anvil and PostgreSQL: contiguous and final ranges only, the
re-read check of blocks already indexed, the progress output, and a concurrent writer.

The chain is the rpc-limits workload (every event kind) followed by 80 empty blocks, so most of
it is below anvil's finalized block (head - 64).
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from keeper import db as keeper_db
from keeper.chain.rpc import ChainClient
from keeper.config import IngestConfig
from keeper.dev.anvil import start_anvil
from keeper.ingest.backfill import BackfillError, backfill_range
from keeper.ingest.events import Decoder
from keeper.resources import read_sql
from tests.support.activity import (
    DevChain,
    deploy_chain,
    indexed_logs,
    make_activity,
    node_logs,
    write_config,
)
from tests.support.daemon import keeper
from tests.support.ingest import Target, make_indexer

ANVIL_FINALITY = 64


@pytest.fixture(scope="module")
def chain() -> Iterator[DevChain]:
    node = start_anvil()
    try:
        dev = deploy_chain(node)
        make_activity(dev, 6, random.Random(11), max_gap=30)
        dev.skip(80)
        yield dev
    finally:
        node.stop()


def target_of(chain: DevChain) -> Target:
    d = chain.deployment
    return Target(chain_id=d.chain_id, addresses=chain.addresses, start_block=d.deployment_block)


async def cursor(url: str) -> asyncpg.Record:
    conn = await keeper_db.connect(url)
    try:
        row = await conn.fetchrow("SELECT * FROM ingest_cursor")
        assert row is not None
        return row
    finally:
        await conn.close()


async def execute(url: str, query: str, *args: Any) -> Any:
    conn = await keeper_db.connect(url)
    try:
        return await conn.fetchval(query, *args)
    finally:
        await conn.close()


async def logs_in_database(url: str) -> list[tuple[int, int, str]]:
    conn = await keeper_db.connect(url)
    try:
        return await indexed_logs(conn)
    finally:
        await conn.close()


def backfill(config: Path, *args: str) -> Any:
    return keeper("backfill", "--config", str(config), *args)


def test_event_counts_lists_every_event_table() -> None:
    text = read_sql("backfill.sql")
    tables = re.findall(
        r"^SELECT '([a-z_]+)' AS event_table, count\(\*\) AS events FROM (\1)$", text, re.M
    )
    decoder = Decoder(1, {"StreamManager": "0x" + "11" * 20, "EscrowVault": "0x" + "22" * 20})
    assert [t for t, _ in tables] == decoder.tables


@pytest.mark.anyio
async def test_backfill_in_two_parts_then_nothing_to_do(
    chain: DevChain, database_url: str, tmp_path: Path
) -> None:
    config = write_config(tmp_path, chain, chain.url, database_url)
    finalized = chain.head() - ANVIL_FINALITY
    first = chain.deployment.deployment_block
    middle = (first + finalized) // 2

    part = backfill(config, "--to", str(middle))
    assert part.returncode == 0, part.stderr
    assert f"indexed blocks {first}..{middle}:" in part.stdout
    row = await cursor(database_url)
    assert row["indexed_block"] == middle
    assert not row["backfill_done"], "stopped short of the finalized block: not done"
    # Not a terminal: plain progress lines on stderr, the last one at 100 %.
    assert re.search(
        r"indexing [\d,]+/[\d,]+ blocks \(100\.0%\) .* blocks/s .* events  ETA", part.stderr
    )
    assert "\r" not in part.stderr

    rest = backfill(config)
    assert rest.returncode == 0, rest.stderr
    assert f"indexed blocks {middle + 1}..{finalized}:" in rest.stdout
    row = await cursor(database_url)
    assert row["indexed_block"] == finalized
    assert row["backfill_done"]
    assert row["finalized_block"] == finalized  # recorded for the views' lag
    mine = await logs_in_database(database_url)
    assert mine == node_logs(chain, finalized)
    assert len(mine) > 100

    again = backfill(config)
    assert again.returncode == 0, again.stderr
    assert f"nothing to do: the index ends at block {finalized}" in again.stdout


@pytest.mark.anyio
async def test_gaps_unfinalized_blocks_and_blocks_before_the_deployment_are_refused(
    chain: DevChain, database_url: str, tmp_path: Path
) -> None:
    config = write_config(tmp_path, chain, chain.url, database_url)
    finalized = chain.head() - ANVIL_FINALITY
    first = chain.deployment.deployment_block
    cases: list[tuple[Sequence[str], str]] = [
        (["--from", str(first + 5)], f"would leave blocks {first}..{first + 4} out of the index"),
        (["--from", str(first + 1)], f"would leave block {first} out of the index"),
        (["--to", str(finalized + 1)], f"is above the finalized block {finalized}"),
        (["--from", str(first - 1)], f"below the deployment block {first}"),
        (["--from", str(first), "--to", str(first - 1)], "is below --from"),
    ]
    for args, message in cases:
        result = backfill(config, *args)
        assert result.returncode == 1, (args, result.stdout)
        assert message in result.stderr, (args, result.stderr)
        assert "help:" in result.stderr or "below --from" in message
        assert "Traceback" not in result.stderr
    assert (await cursor(database_url))["indexed_block"] == first - 1
    usage = backfill(config, "--from", "x")
    assert usage.returncode == 2


@pytest.mark.anyio
async def test_a_re_read_compares_event_counts_and_writes_nothing(
    chain: DevChain, database_url: str, tmp_path: Path
) -> None:
    config = write_config(tmp_path, chain, chain.url, database_url)
    finalized = chain.head() - ANVIL_FINALITY
    first = chain.deployment.deployment_block
    middle = (first + finalized) // 2
    assert backfill(config, "--to", str(middle)).returncode == 0

    # Below the cursor: checked; above it: written.
    both = backfill(config, "--from", str(first))
    assert both.returncode == 0, both.stderr
    assert f"blocks {first}..{middle} were indexed already" in both.stdout
    assert "the same number of each kind as in the database" in both.stdout
    assert f"indexed blocks {middle + 1}..{finalized}" in both.stdout
    before = await logs_in_database(database_url)
    assert before == node_logs(chain, finalized)

    settled = await execute(database_url, "SELECT count(*) FROM stream_settled")
    await execute(
        database_url,
        "DELETE FROM stream_settled WHERE (block_number, log_index) = "
        "(SELECT block_number, log_index FROM stream_settled ORDER BY block_number LIMIT 1)",
    )
    differs = backfill(config, "--from", str(first))
    assert differs.returncode == 1
    assert f"stream_settled: {settled - 1} events in the database, {settled} on the chain" in (
        differs.stdout
    )
    assert "does not match the chain; nothing was written" in differs.stderr
    assert "keeper verify" in differs.stderr
    assert len(await logs_in_database(database_url)) == len(before) - 1


@pytest.mark.anyio
async def test_the_indexed_block_must_still_be_on_the_chain(
    chain: DevChain, database_url: str, tmp_path: Path
) -> None:
    config = write_config(tmp_path, chain, chain.url, database_url)
    first = chain.deployment.deployment_block
    assert backfill(config, "--to", str(first + 20)).returncode == 0
    # As if the indexed block had been reorganised away while no keeper ran.
    await execute(database_url, "UPDATE ingest_cursor SET indexed_hash = $1", b"\x01" * 32)
    result = backfill(config)
    assert result.returncode == 1
    assert f"the last indexed block {first + 20} (0x{'01' * 32}) is no longer" in result.stderr
    assert "keeper run" in result.stderr
    assert (await cursor(database_url))["indexed_block"] == first + 20


class MovingCursor(ChainClient):
    """A client whose second eth_getLogs first moves the cursor, as another indexer writing
    the same chain would; `moved_to` is where it put it."""

    def __init__(self, url: str, database_url: str) -> None:
        super().__init__(url)
        self.database_url = database_url
        self.calls = 0
        self.moved_to: int | None = None

    async def get_logs(
        self, addresses: Sequence[str], from_block: int, to_block: int
    ) -> list[dict[str, Any]]:
        self.calls += 1
        if self.calls == 2:
            self.moved_to = await execute(
                self.database_url,
                "UPDATE ingest_cursor SET indexed_block = indexed_block + 1 "
                "RETURNING indexed_block",
            )
        return await super().get_logs(addresses, from_block, to_block)


@pytest.mark.anyio
async def test_a_concurrent_writer_stops_the_backfill_cleanly(
    chain: DevChain, database_url: str
) -> None:
    client = MovingCursor(chain.url, database_url)
    pool = await keeper_db.create_pool(database_url, min_size=1, max_size=2)
    try:
        settings = IngestConfig(initial_range=5, max_range=5)
        indexer = make_indexer(client, pool, target_of(chain), settings)
        with pytest.raises(BackfillError) as err:
            await backfill_range(indexer, None, None, None)
    finally:
        await pool.close()
        await client.close()
    message = str(err.value)
    assert "another keeper wrote to the index meanwhile" in message
    assert "nothing of this backfill's current range was written" in message
    # The other writer's cursor stands: the backfill wrote nothing after it moved.
    assert client.moved_to is not None
    assert (await cursor(database_url))["indexed_block"] == client.moved_to
