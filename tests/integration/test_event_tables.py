"""The event tables are what `keeper.ingest.catalog` states: the migrated database has exactly
the catalog's event tables, each with the catalog's columns and SQL types, and the rollback
built from the catalog empties every one of them.

The migrations are checksummed and never edited, so the catalog is held equal to them here
rather than generating them: a new event needs a migration and a catalog entry, and this test
fails until the two agree.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import asyncpg
import pytest

from keeper import db as keeper_db
from keeper.ingest.catalog import (
    COMMON_COLUMNS,
    COMMON_TYPES,
    EVENT_TABLES,
    RAW_COLUMNS,
    RAW_TABLE,
    RAW_TYPES,
    rollback_query,
)
from keeper.ingest.events import Decoder, build_catalog
from keeper.ingest.store import Store
from tests.support.synthetic import ADDRESSES, CHAIN, FIRST_BLOCK, busy_chain

pytestmark = pytest.mark.anyio

Columns = dict[str, dict[str, tuple[str, bool]]]  # table -> column -> (SQL type, nullable)

MIGRATED_COLUMNS = """
SELECT c.table_name, c.column_name, c.data_type, c.udt_name, c.numeric_precision,
       c.numeric_scale, c.is_nullable = 'YES' AS nullable
FROM information_schema.columns c
JOIN information_schema.tables t USING (table_schema, table_name)
WHERE c.table_schema = 'public' AND t.table_type = 'BASE TABLE'
ORDER BY c.table_name, c.ordinal_position
"""


def _sql_type(row: asyncpg.Record) -> str:
    """A column's type as the catalog writes it."""
    if row["data_type"] == "numeric":
        return f"numeric({row['numeric_precision']},{row['numeric_scale']})"
    if row["data_type"] == "ARRAY":
        return f"{row['udt_name'].removeprefix('_')}[]"
    return str(row["data_type"])


async def migrated_event_tables(conn: asyncpg.Connection) -> Columns:
    """Every table of the migrated database that has the event tables' common columns."""
    tables: Columns = {}
    for row in await conn.fetch(MIGRATED_COLUMNS):
        tables.setdefault(row["table_name"], {})[row["column_name"]] = (
            _sql_type(row),
            row["nullable"],
        )
    return {t: cols for t, cols in tables.items() if set(COMMON_COLUMNS) <= set(cols)}


def catalog_event_tables() -> Columns:
    """The event tables as the catalog and the ABIs state them: every column NOT NULL."""
    typed, _ = build_catalog()
    tables = {RAW_TABLE: _not_null(RAW_COLUMNS, RAW_TYPES)}
    for spec in typed.values():
        tables[spec.table] = _not_null(spec.copy_columns, COMMON_TYPES + spec.sql_types)
    return tables


def _not_null(columns: tuple[str, ...], types: tuple[str, ...]) -> dict[str, tuple[str, bool]]:
    return {c: (t, False) for c, t in zip(columns, types, strict=True)}


async def test_migrated_event_tables_are_the_catalog(database_url: str) -> None:
    conn = await keeper_db.connect(database_url)
    try:
        migrated = await migrated_event_tables(conn)
    finally:
        await conn.close()
    expected = catalog_event_tables()
    assert sorted(expected) == list(EVENT_TABLES)
    assert sorted(migrated) == sorted(expected), "event tables of the migrations and the catalog"
    for table, columns in expected.items():
        assert migrated[table] == columns, f"{table}: migrated columns differ from the catalog"


async def test_the_rollback_empties_every_event_table(
    database_factory: Callable[..., str], template_database: str
) -> None:
    """The rollback built from the catalog deletes the rows after the block from every event
    table, counts them, and leaves the chain's earlier rows and other chains' rows alone."""
    decoder = Decoder(CHAIN, ADDRESSES)
    c = busy_chain(decoder, random.Random(5))
    c.next_block()
    c.next_tx()
    c.emit("EscrowVault", "Withdrawn", bytes([0xB0]) * 20, 0, 0)  # events it leaves out
    c.emit("StreamManager", "UsageSkipped", 1, 99, 5, 1)
    batch = decoder.decode(c.logs, {})
    assert set(batch.rows) == set(EVENT_TABLES), "the synthetic chain should fill every table"
    conn = await keeper_db.connect(database_factory(template_database))
    try:
        store = Store(CHAIN, decoder)
        await store.cursor(conn, FIRST_BLOCK)
        await store.write_range(conn, batch, FIRST_BLOCK, c.header(), backfill_done=True)
        other = await conn.fetchval(rollback_query(), CHAIN + 1, FIRST_BLOCK - 1)
        kept = await conn.fetchval(rollback_query(), CHAIN, c.block)
        removed = await conn.fetchval(rollback_query(), CHAIN, FIRST_BLOCK - 1)
        left = {
            table: await conn.fetchval(f"SELECT count(*) FROM {table}")  # noqa: S608 - catalog names
            for table in EVENT_TABLES
        }
    finally:
        await conn.close()
    assert (other, kept, removed) == (0, 0, batch.count)
    assert left == dict.fromkeys(EVENT_TABLES, 0)


async def test_every_event_table_is_partitioned(database_url: str) -> None:
    """Every event table of the catalog is listed in `event_tables` (which the partition
    functions read), partitioned by (chain_id, block_number) ranges, with its DEFAULT partition
    in schema event_partitions; and no other table is listed."""
    conn = await keeper_db.connect(database_url)
    try:
        listed = [r["name"] for r in await conn.fetch("SELECT name FROM event_tables ORDER BY 1")]
        shapes = {
            r["name"]: (r["key"], r["default_part"])
            for r in await conn.fetch(
                """
                SELECT c.relname AS name, pg_get_partkeydef(c.oid) AS key,
                       (SELECT d.oid::regclass::text FROM pg_inherits i
                        JOIN pg_partitioned_table p ON p.partrelid = i.inhparent
                        JOIN pg_class d ON d.oid = i.inhrelid
                        WHERE i.inhparent = c.oid AND d.oid = p.partdefid) AS default_part
                FROM pg_class c
                WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'p'
                """
            )
        }
    finally:
        await conn.close()
    assert listed == list(EVENT_TABLES)
    assert shapes == {
        table: ("RANGE (chain_id, block_number)", f"event_partitions.{table}_default")
        for table in EVENT_TABLES
    }
