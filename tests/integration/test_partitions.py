"""The event tables partitioned by block range, against a real anvil and a real PostgreSQL.

The indexer runs with partitions of 8 blocks, so a few dozen blocks of activity span several:
every row lands in the partition of its block, a reorg whose common ancestor is in one partition
and whose orphaned blocks reach into the next rolls back both, the views and `keeper verify`
see through the partitions, and `keeper db archive-events` moves only whole finalized ranges
into schema `archive`, leaving the projections (and so verify, and the rollback of a later
reorg) as they were.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Callable
from typing import Any

import anyio
import asyncpg
import pytest

from keeper import db as keeper_db
from keeper import resources
from keeper.chain.rpc import ChainClient
from keeper.config import IngestConfig
from keeper.db.migrations import migrate
from keeper.dev.anvil import Anvil
from keeper.ingest.catalog import EVENT_TABLES
from keeper.ingest.events import Decoder
from keeper.ingest.store import PartitionsBusy, Store
from keeper.ops.partitions import ArchiveRefused, archive_events
from keeper.ops.verify import verify
from tests.support.daemon import keeper
from tests.support.ingest import (
    Driver,
    FreshDatabases,
    assert_states_equal,
    chain_log_keys,
    contract_state,
    index_until_caught_up,
    open_indexer,
    projection_state,
    reorg_rows,
    verify_index,
)
from tests.support.synthetic import ADDRESSES, CHAIN

pytestmark = pytest.mark.anyio

SIZE = 8  # blocks per partition
SETTINGS = IngestConfig(recheck_delay=0.0, poll_interval=0.01, partition_blocks=SIZE)
# The operator views compared with a fresh (one-partition) index: every view of the index,
# less those that show its own history (reorgs, the indexer's progress).
HISTORY_VIEWS = {"keeper.reorgs", "keeper.indexer_status"}

Key = tuple[int, int, bytes]  # block, log index, tx hash


@pytest.fixture
def fresh(database_factory: Callable[..., str], template_database: str) -> FreshDatabases:
    """Where the reference (fresh) indexes are built."""
    return FreshDatabases(lambda: database_factory(template_database))


def part_name(table: str, chain_id: int, block: int) -> str:
    """The partition of `table` that holds `block` (ranges of SIZE blocks from block 0)."""
    return f"event_partitions.{table}_{chain_id}_{block - block % SIZE}"


async def rows_by_partition(conn: keeper_db.Conn, chain_id: int) -> dict[str, set[Key]]:
    """Each partition's rows of the chain (the partition as `tableoid` names it)."""
    found: dict[str, set[Key]] = {}
    for table in EVENT_TABLES:
        for r in await conn.fetch(
            f"SELECT tableoid::regclass::text AS part, block_number, log_index, tx_hash "  # noqa: S608
            f"FROM {table} WHERE chain_id = $1",
            chain_id,
        ):
            key = (r["block_number"], r["log_index"], bytes(r["tx_hash"]))
            found.setdefault(r["part"], set()).add(key)
    return found


async def assert_rows_in_their_partitions(conn: keeper_db.Conn, chain_id: int) -> int:
    """Every event row of the chain is in its block's partition, and the chain's ranges are
    SIZE-block ranges one after the other. Returns the number of ranges holding rows."""
    ranges = await conn.fetch(
        "SELECT from_block, to_block FROM event_ranges WHERE chain_id = $1 ORDER BY 1", chain_id
    )
    assert ranges, "no partitions were made"
    for r, after in itertools.pairwise(ranges):
        assert r["to_block"] == after["from_block"]
    assert all(r["to_block"] - r["from_block"] == SIZE for r in ranges)
    holding: set[int] = set()
    for table in EVENT_TABLES:
        rows = await conn.fetch(
            f"SELECT tableoid::regclass::text AS part, block_number FROM {table} "  # noqa: S608
            "WHERE chain_id = $1",
            chain_id,
        )
        wrong = [(r["part"], r["block_number"]) for r in rows]
        wrong = [(p, b) for p, b in wrong if p != part_name(table, chain_id, b)]
        assert not wrong, f"{table}: rows outside their block's partition: {wrong[:5]}"
        holding |= {r["block_number"] - r["block_number"] % SIZE for r in rows}
    return len(holding)


async def assert_views_equal_fresh(conn: keeper_db.Conn, fresh_url: str) -> None:
    """Every operator view shows the same rows as on a fresh index with one partition."""
    views = [
        r[0]
        for r in await conn.fetch(
            "SELECT format('%I.%I', schemaname, viewname) FROM pg_views "
            "WHERE schemaname = 'keeper' ORDER BY 1"
        )
    ]
    other = await keeper_db.connect(fresh_url)
    try:
        for view in views:
            if view in HISTORY_VIEWS:
                continue
            query = f"SELECT * FROM {view}"  # noqa: S608
            mine = sorted(map(repr, map(tuple, await conn.fetch(query))))
            theirs = sorted(map(repr, map(tuple, await other.fetch(query))))
            assert mine == theirs, f"{view} differs from the fresh index's"
    finally:
        await other.close()


async def keeper_verify(driver: Driver, conn: keeper_db.Conn) -> None:
    """`keeper verify`'s comparison of the projections with the contracts: no difference."""
    client = ChainClient(driver.url)
    try:
        report = await verify(conn, client, driver.deployment)
    finally:
        await client.close()
    assert report.ok, [d.text() for d in report.differences]
    assert report.streams > 0


def activity_until(driver: Driver, *, head_at_least: int, head_mod: int) -> None:
    """Blocks of a few transactions each until the head is at least `head_at_least` and
    `head_mod` blocks into its partition."""
    while driver.head() < head_at_least or driver.head() % SIZE != head_mod:
        driver.act(driver.rng.randint(2, 4))


async def test_a_reorg_across_a_partition_boundary(
    anvil_factory: Callable[..., Anvil], database_url: str, fresh: FreshDatabases
) -> None:
    """Indexed with 8-block partitions, every row lands in its block's partition; a reorg whose
    common ancestor is 3 blocks below a partition boundary and whose orphaned blocks reach 3
    blocks past it removes the orphaned rows from both partitions, rewinds the projections and
    re-indexes the new blocks: the index then equals a fresh one (events, projections), the
    contracts' state and logs, the views equal a fresh index's, and `keeper verify` is clean."""
    driver = Driver(anvil_factory(), random.Random(21))
    activity_until(driver, head_at_least=driver.setup_block + 4 * SIZE, head_mod=2)
    async with open_indexer(driver.url, database_url, driver.target, SETTINGS) as indexer:
        await verify_index(indexer, driver, fresh)
        async with indexer.pool.acquire() as conn:
            assert await assert_rows_in_their_partitions(conn, driver.chain_id) >= 4
            defaults = await conn.fetchval(
                "SELECT count(*) FROM event_partitions.stream_opened_default"
            )
            assert defaults == 0, "the indexer wrote into a DEFAULT partition"
            before = await rows_by_partition(conn, driver.chain_id)

        head = driver.head()
        boundary = head - head % SIZE
        ancestor = boundary - 3
        lower = part_name("x", driver.chain_id, ancestor).removeprefix("event_partitions.x")
        upper = part_name("x", driver.chain_id, boundary).removeprefix("event_partitions.x")
        orphaned = {
            part: {k for k in keys if k[0] > ancestor}
            for part, keys in before.items()
            if part.endswith((lower, upper))
        }
        driver.reorg(head - ancestor, 6)
        canonical = {(b, i, h) for b, i, h, _ in chain_log_keys(driver, ancestor + 1, head)}
        gone = {part: keys - canonical for part, keys in orphaned.items()}
        assert any(keys for part, keys in gone.items() if part.endswith(lower))
        assert any(keys for part, keys in gone.items() if part.endswith(upper))

        await verify_index(indexer, driver, fresh)
        async with indexer.pool.acquire() as conn:
            (row,) = await reorg_rows(conn, driver.chain_id)
            assert row["ancestor_block"] == ancestor
            assert row["events_removed"] >= sum(len(keys) for keys in gone.values())
            after = await rows_by_partition(conn, driver.chain_id)
            for part, keys in gone.items():
                assert not keys & after.get(part, set()), f"{part} kept orphaned rows"
            await assert_rows_in_their_partitions(conn, driver.chain_id)
            assert fresh.url is not None
            await assert_views_equal_fresh(conn, fresh.url)
            await keeper_verify(driver, conn)


async def _partition_counts(conn: keeper_db.Conn, chain_id: int, first: int) -> dict[str, int]:
    """Rows per event table in the partition of the range starting at `first`, by its name."""
    counts = {}
    for table in EVENT_TABLES:
        counts[table] = await conn.fetchval(
            f"SELECT count(*) FROM event_partitions.{table}_{chain_id}_{first}"  # noqa: S608
        )
    return counts


async def test_archive_events_moves_only_whole_finalized_ranges(
    anvil_factory: Callable[..., Anvil], database_url: str
) -> None:
    """`keeper db archive-events` refuses a block above the finalized one, lists in a dry run
    and then archives only the ranges wholly below the block: each range's partitions move whole
    into schema archive, and in their place stay the rows the projections are recomputed from.
    The projections, the views that read them and `keeper verify` are unchanged; later activity
    on streams opened in archived ranges, and a reorg of it, still end equal to the contracts."""
    driver = Driver(anvil_factory(), random.Random(22))
    activity_until(driver, head_at_least=driver.setup_block + 3 * SIZE, head_mod=0)
    driver.mine(80)  # anvil's finalized block is head - 64: the activity becomes final
    for _ in range(4):
        driver.act(3, only=("settle", "top_up", "usage", "update_rate", "deposit"))
    chain_id = driver.chain_id
    async with open_indexer(driver.url, database_url, driver.target, SETTINGS) as indexer:
        await index_until_caught_up(indexer)
        async with indexer.pool.acquire() as conn:
            # Backfilled in ranges much wider than a partition: each row still in its own.
            assert await assert_rows_in_their_partitions(conn, chain_id) >= 3
            cursor = await indexer.store.cursor(conn, indexer.start_block)
            assert cursor.finalized_block is not None
            safe = min(cursor.finalized_block, cursor.indexed_block)
            below = safe + 1 - (safe + 1) % SIZE - 3  # inside a range: that one stays
            ranges = [
                (r["from_block"], r["to_block"])
                for r in await conn.fetch(
                    "SELECT from_block, to_block FROM event_ranges WHERE chain_id = $1 ORDER BY 1",
                    chain_id,
                )
            ]
            wholly_below = [r for r in ranges if r[1] <= below]
            assert len(wholly_below) >= 3
            stays = [r for r in ranges if r[1] > below]
            balances = await conn.fetch("SELECT * FROM keeper.stream_balances ORDER BY 1, 2")
            before = {r[0]: await _partition_counts(conn, chain_id, r[0]) for r in wholly_below}
            kept_tables = await conn.fetch("SELECT name, keep FROM event_tables")
            keep = {r["name"]: r["keep"] for r in kept_tables}

            with pytest.raises(ArchiveRefused, match="finalized and indexed up to block"):
                await archive_events(conn, chain_id, safe + 2, partition_blocks=SIZE)

            env = {"KEEPER_DATABASE_URL": database_url}
            args = ["db", "archive-events", "--chain-id", str(chain_id), "--below", str(below)]
            dry = keeper(*args, "--dry-run", "--json", env=env)
            assert dry.returncode == 0, dry.stderr
            listed = json.loads(dry.stdout)["ranges"]
            assert [(r["from_block"], r["to_block"]) for r in listed] == wholly_below
            assert not await conn.fetchval(
                "SELECT count(*) FROM event_ranges WHERE archived_at IS NOT NULL"
            )

            done = keeper(*args, "--json", env=env)
            assert done.returncode == 0, done.stderr
            report = json.loads(done.stdout)
            assert [(r["from_block"], r["to_block"]) for r in report["ranges"]] == wholly_below

            archived = await conn.fetch(
                "SELECT from_block FROM event_ranges WHERE chain_id = $1 "
                "AND archived_at IS NOT NULL ORDER BY 1",
                chain_id,
            )
            assert [r["from_block"] for r in archived] == [r[0] for r in wholly_below]
            for (first, _), moved in zip(wholly_below, report["ranges"], strict=True):
                attached = await _partition_counts(conn, chain_id, first)
                assert moved["archived"] == sum(before[first].values())
                assert moved["kept"] == sum(attached.values())
                for table in EVENT_TABLES:
                    in_archive = await conn.fetchval(
                        f"SELECT count(*) FROM archive.{table}_{chain_id}_{first}"  # noqa: S608
                    )
                    assert in_archive == before[first][table], f"{table} lost rows"
                    if keep[table] == "all":
                        assert attached[table] == before[first][table]
                    elif keep[table] == "none":
                        assert attached[table] == 0
                    else:
                        assert attached[table] <= before[first][table]
            assert sum(sum(c.values()) for c in before.values()) > sum(
                r["kept"] for r in report["ranges"]
            ), "nothing left the attached partitions"
            for first, _ in stays:
                parts = await conn.fetchval(
                    "SELECT count(*) FROM pg_tables WHERE schemaname = 'archive' "
                    "AND tablename LIKE $1",
                    f"%\\_{chain_id}\\_{first}",
                )
                assert parts == 0, f"range {first} is not wholly below {below}"

            again = keeper(*args, "--json", env=env)
            assert again.returncode == 0, again.stderr
            assert json.loads(again.stdout)["ranges"] == []

            assert (
                await conn.fetch("SELECT * FROM keeper.stream_balances ORDER BY 1, 2") == balances
            )
            await keeper_verify(driver, conn)

        # Streams opened in archived ranges settle, top up and report usage again; a reorg of
        # those blocks is rolled back from the rows kept attached.
        for _ in range(4):
            driver.act(3, only=("settle", "top_up", "usage", "update_rate", "close", "deposit"))
        await index_until_caught_up(indexer)
        driver.reorg(3, 4)
        await index_until_caught_up(indexer)
        async with indexer.pool.acquire() as conn:
            assert len(await reorg_rows(conn, chain_id)) == 1
            indexed = await projection_state(conn, chain_id)
            assert_states_equal(indexed, contract_state(driver, indexed.block, indexed.accounts()))
            await keeper_verify(driver, conn)


async def test_rows_without_a_range_wait_in_the_default_partition(database_url: str) -> None:
    """A row written where no range exists goes to the DEFAULT partition; the range made for
    it later takes it over. Ranges are aligned, made once, clipped to the ones there when the
    size changes, made for two chains at once, and a size below 1 is refused."""
    conn = await keeper_db.connect(database_url)
    try:
        insert = (
            "INSERT INTO claimed (chain_id, block_number, log_index, tx_hash, block_time, "
            "payee, amount) VALUES ($1, $2, 0, $3, 0, $4, 1)"
        )
        await conn.execute(insert, 901, 5, b"\x01" * 32, b"\x02" * 20)
        where = "SELECT tableoid::regclass::text FROM claimed WHERE chain_id = 901"
        assert await conn.fetchval(where) == "event_partitions.claimed_default"

        ensure = "SELECT ensure_event_partitions($1, $2, $3, $4)"
        assert await conn.fetchval(ensure, 901, 3, 20, 8) == 24
        assert await conn.fetchval(where) == "event_partitions.claimed_901_0"
        assert await conn.fetchval(ensure, 901, 0, 23, 8) == 24  # nothing to make
        # A new size: the ranges after the last one are aligned to it, clipped to 24.
        assert await conn.fetchval(ensure, 901, 0, 40, 10) == 50
        ranges = await conn.fetch(
            "SELECT from_block, to_block FROM event_ranges WHERE chain_id = 901 ORDER BY 1"
        )
        assert [tuple(r) for r in ranges] == [
            (0, 8),
            (8, 16),
            (16, 24),
            (24, 30),
            (30, 40),
            (40, 50),
        ]
        with pytest.raises(asyncpg.RaiseError, match="at least 1 block"):
            await conn.fetchval(ensure, 901, 0, 1, 0)
    finally:
        await conn.close()

    async def make(chain: int) -> None:
        other = await keeper_db.connect(database_url)
        try:
            for first in range(0, 200, 40):
                await other.fetchval(ensure, chain, first, first + 39, 16)
        finally:
            await other.close()

    async with anyio.create_task_group() as tg:
        for chain in (902, 903):
            tg.start_soon(make, chain)
    conn = await keeper_db.connect(database_url)
    try:
        for chain in (902, 903):
            ranges = await conn.fetch(
                "SELECT from_block, to_block FROM event_ranges WHERE chain_id = $1 ORDER BY 1",
                chain,
            )
            assert [tuple(r) for r in ranges] == [(b, b + 16) for b in range(0, 208, 16)]
    finally:
        await conn.close()


class CountingConnection(asyncpg.Connection):
    """A connection that counts the calls of ensure_event_partitions sent through it."""

    ensured = 0

    async def fetchval(self, query: str, *args: Any, **kwargs: Any) -> Any:
        if "ensure_event_partitions" in query:
            self.ensured += 1
        return await super().fetchval(query, *args, **kwargs)


async def test_the_store_makes_partitions_once_per_range(database_url: str) -> None:
    """The indexer's store calls ensure_event_partitions only for blocks it has not covered."""
    store = Store(CHAIN, Decoder(CHAIN, ADDRESSES), partition_blocks=100)
    conn = await asyncpg.connect(database_url, connection_class=CountingConnection)
    try:
        await store.ensure_partitions(conn, 150, 160)
        await store.ensure_partitions(conn, 161, 199)
        await store.ensure_partitions(conn, 150, 150)
        assert conn.ensured == 1
        await store.ensure_partitions(conn, 200, 260)
        await store.ensure_partitions(conn, 170, 299)
        assert conn.ensured == 2
        await store.ensure_partitions(conn, 300, 300)
        assert conn.ensured == 3
        ranges = await conn.fetch(
            "SELECT from_block, to_block FROM event_ranges WHERE chain_id = $1 ORDER BY 1", CHAIN
        )
        assert [tuple(r) for r in ranges] == [(100, 200), (200, 300), (300, 400)]
    finally:
        await conn.close()


async def test_0018_keeps_the_rows_and_views_of_an_existing_index(
    empty_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Migration 0018 on a database that already holds events: every row is kept (in the DEFAULT
    partitions), the views that read the event tables show the same rows as before, and the
    first range the indexer makes takes the rows of its blocks over."""
    shipped = resources.migration_files()
    monkeypatch.setattr(
        resources, "migration_files", lambda: [(n, s) for n, s in shipped if n < "0018"]
    )
    await migrate(empty_database_url)
    conn = await keeper_db.connect(empty_database_url)
    try:
        payee, tx = b"\x02" * 20, b"\x01" * 32
        await conn.execute("INSERT INTO chains (chain_id, name) VALUES (7, 'seven')")
        await conn.execute(
            "INSERT INTO ingest_cursor (chain_id, start_block, indexed_block, indexed_timestamp)"
            " VALUES (7, 0, 30, 1000)"
        )
        await conn.executemany(
            "INSERT INTO claimed (chain_id, block_number, log_index, tx_hash, block_time, payee,"
            " amount) VALUES (7, $1, 0, $2, $3, $4, $5)",
            [(5, tx, 100, payee, 10), (25, tx, 500, payee, 20)],
        )
        await conn.execute(
            "INSERT INTO stream_opened (chain_id, block_number, log_index, tx_hash, block_time,"
            " stream_id, payer, payee, rate, deposit, price_list)"
            " VALUES (7, 6, 1, $1, 100, 1, $2, $2, 1, 5, false)",
            tx,
            payee,
        )
        await conn.execute(
            "INSERT INTO usage_price_set (chain_id, block_number, log_index, tx_hash, block_time,"
            " stream_id, price, effective_at) VALUES (7, 6, 2, $1, 100, 1, 3, 100)",
            tx,
        )
        await conn.execute(
            "INSERT INTO payee_ledger (chain_id, account, credited, first_block)"
            " VALUES (7, $1, 0, 5)",
            payee,
        )
        views = {
            view: sorted(map(repr, map(tuple, await conn.fetch(f"SELECT * FROM {view}"))))  # noqa: S608
            for view in ("keeper.payee_ledger", "keeper.price_history")
        }
        monkeypatch.setattr(resources, "migration_files", lambda: shipped)
        assert await migrate(conn) == [n for n, _ in shipped if n >= "0018"]
        for view, rows in views.items():
            assert rows, f"{view} shows nothing to compare"
            after = sorted(map(repr, map(tuple, await conn.fetch(f"SELECT * FROM {view}"))))  # noqa: S608
            assert after == rows, view
        where = "SELECT block_number, tableoid::regclass::text FROM claimed ORDER BY 1"
        assert [tuple(r) for r in await conn.fetch(where)] == [
            (5, "event_partitions.claimed_default"),
            (25, "event_partitions.claimed_default"),
        ]
        await conn.fetchval("SELECT ensure_event_partitions(7, 20, 31, 10)")
        assert [tuple(r) for r in await conn.fetch(where)] == [
            (5, "event_partitions.claimed_default"),
            (25, "event_partitions.claimed_7_20"),
        ]
    finally:
        await conn.close()


async def test_a_held_lock_delays_the_partitions_without_blocking_readers(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While another transaction holds a lock that creating a partition needs, the store gives
    up after half a second and tries again, so a query arriving meanwhile waits at most that
    long behind it; once the lock is free the partitions are made. When it stays taken through
    every retry, the error names the blocks and says what to do."""
    blocker = await keeper_db.connect(database_url)
    reader = await keeper_db.connect(database_url)
    conn = await keeper_db.connect(database_url)
    store = Store(CHAIN, Decoder(CHAIN, ADDRESSES), partition_blocks=100)
    try:
        holding = blocker.transaction()
        await holding.start()
        await blocker.execute("LOCK TABLE event_partitions.claimed_default IN ACCESS SHARE MODE")
        waits: list[float] = []

        async def read_meanwhile() -> None:
            for _ in range(4):
                await anyio.sleep(0.3)
                started = anyio.current_time()
                await reader.fetchval("SELECT count(*) FROM claimed")
                waits.append(anyio.current_time() - started)
            await holding.commit()

        # Without the lock timeout the readers would queue behind the creation for good.
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(read_meanwhile)
                started = anyio.current_time()
                await store.ensure_partitions(conn, 0, 10)
                took = anyio.current_time() - started
        assert took >= 1.0, "the partitions were made while the lock was held"
        assert max(waits) < 2.0, f"a reader waited behind the partition creation: {waits}"
        assert await conn.fetchval("SELECT count(*) FROM event_ranges") == 1

        monkeypatch.setattr("keeper.ingest.store.PARTITION_RETRY_DELAYS", (0.1,))
        holding = blocker.transaction()
        await holding.start()
        await blocker.execute("LOCK TABLE event_partitions.claimed_default IN ACCESS SHARE MODE")
        with pytest.raises(PartitionsBusy, match="blocks 100 to 120") as caught:
            await store.ensure_partitions(conn, 100, 120)
        assert caught.value.help and "pg_locks" in caught.value.help
        await holding.rollback()
    finally:
        for c in (blocker, reader, conn):
            await c.close()
