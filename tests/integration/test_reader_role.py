"""The read-only role `keeper_reader` (sql/migrations/0010_reader_role.sql), tested by connecting
as a login role that is a member of it: every operator view reads, nothing else does, and no
write of any kind goes through.

The objects are enumerated from the catalogs, so a view, table or function added later is
covered without touching this file.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import AsyncIterator, Callable
from urllib.parse import urlsplit, urlunsplit

import anyio
import asyncpg
import pytest

from keeper import db as keeper_db
from keeper import resources
from keeper.db.migrations import migrate

pytestmark = pytest.mark.anyio

CHAIN = 31337
PAYER = bytes.fromhex("11" * 20)
PAYEE = bytes.fromhex("ab" * 20)
T0 = 1_700_000_000


def unique_role_name() -> str:
    return f"keeper_reader_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"


def as_user(url: str, user: str) -> str:
    """The same URL with another user and no password (the test server trusts 127.0.0.1)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{user}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


@pytest.fixture
async def login_role(database_server_url: str) -> AsyncIterator[str]:
    """A LOGIN role that is a member of keeper_reader and nothing else; dropped afterwards."""
    name = unique_role_name()
    await _admin(database_server_url, f"CREATE ROLE {name} LOGIN IN ROLE keeper_reader")
    try:
        yield name
    finally:
        await _admin(database_server_url, f"DROP ROLE IF EXISTS {name}")


async def _admin(url: str, statement: str) -> None:
    conn = await keeper_db.connect(url)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


async def put_data(db: asyncpg.Connection) -> None:
    """A little of everything the indexer writes, so that the views have rows to show."""
    await db.execute("INSERT INTO chains (chain_id, name) VALUES ($1, 'anvil')", CHAIN)
    await db.execute(
        "INSERT INTO deployments (chain_id, name, address, deployment_block) "
        "VALUES ($1, 'stream_manager', $2, 1)",
        CHAIN,
        PAYEE,
    )
    await db.execute(
        """
        INSERT INTO ingest_cursor (chain_id, start_block, indexed_block, indexed_hash,
                                   indexed_timestamp, head_block, head_timestamp, finalized_block)
        VALUES ($1, 0, 50, $2, $3, 50, $3, 40)
        """,
        CHAIN,
        (50).to_bytes(32, "big"),
        T0 + 100,
    )
    await db.execute(
        "INSERT INTO contract_params (chain_id, fee_bps, fee_recipient, updated_block) "
        "VALUES ($1, 250, $2, 1)",
        CHAIN,
        PAYEE,
    )
    await db.execute(
        """
        INSERT INTO streams (chain_id, stream_id, payer, payee, rate, balance, settled_at,
                             usage_seq, price, status, opened_block, updated_block)
        VALUES ($1, 1, $2, $3, 1000, 5000000, $4, 0, 10, 'open', 1, 10)
        """,
        CHAIN,
        PAYER,
        PAYEE,
        T0,
    )
    await db.execute(
        """
        INSERT INTO escrows (chain_id, escrow_id, payer, payee, amount, expires_at, status,
                             created_block, updated_block)
        VALUES ($1, 1, $2, $3, 1000, $4, 'open', 1, 10)
        """,
        CHAIN,
        PAYER,
        PAYEE,
        T0 + 50,
    )
    await db.execute(
        "INSERT INTO usage_inbox (stream_id, units, producer_key, label) "
        "VALUES ('1', '5', 'req-1', 'api')"
    )


@pytest.fixture
async def reader(
    database_url: str, db: asyncpg.Connection, login_role: str
) -> AsyncIterator[asyncpg.Connection]:
    """A connection as the member of keeper_reader to a migrated database with data in it."""
    await put_data(db)
    conn = await keeper_db.connect(as_user(database_url, login_role))
    try:
        yield conn
    finally:
        await conn.close()


async def names(db: asyncpg.Connection, query: str) -> list[str]:
    return [r[0] for r in await db.fetch(query)]


async def views(db: asyncpg.Connection) -> list[str]:
    return await names(
        db,
        "SELECT format('%I.%I', schemaname, viewname) FROM pg_views "
        "WHERE schemaname = 'keeper' ORDER BY 1",
    )


async def public_tables(db: asyncpg.Connection) -> list[asyncpg.Record]:
    """Every table in schema public, with one of its columns (for the UPDATE)."""
    return await db.fetch(
        """
        SELECT format('%I.%I', t.schemaname, t.tablename) AS name,
               (SELECT quote_ident(a.attname) FROM pg_attribute a
                WHERE a.attrelid = format('%I.%I', t.schemaname, t.tablename)::regclass
                  AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum LIMIT 1) AS col
        FROM pg_tables t WHERE t.schemaname = 'public' ORDER BY 1
        """
    )


async def test_every_view_reads(db: asyncpg.Connection, reader: asyncpg.Connection) -> None:
    all_views = await views(db)
    assert len(all_views) >= 20
    assert await views(reader) == all_views  # the reader sees the same list
    rows = {}
    for view in all_views:
        select = f"SELECT * FROM {view}"  # noqa: S608 - catalog names
        rows[view] = await reader.fetch(select)
        assert rows[view] == await db.fetch(select), view
    # The data is really read through the views, not just empty results.
    assert len(rows["keeper.stream_balances"]) == 1
    assert len(rows["keeper.escrows_expired"]) == 1
    assert len(rows["keeper.indexer_status"]) == 1
    assert len(rows["keeper.usage_pending"]) == 1


async def test_no_table_or_sequence_reads_or_writes(
    db: asyncpg.Connection, reader: asyncpg.Connection
) -> None:
    tables = await public_tables(db)
    assert {"public.streams", "public.usage_inbox", "public.intents"} <= {t["name"] for t in tables}
    assert "public.keeper_migrations" in {t["name"] for t in tables}
    for t in tables:
        table, col = t["name"], t["col"]
        for statement in (
            f"SELECT * FROM {table} LIMIT 1",  # noqa: S608 - catalog names
            f"INSERT INTO {table} DEFAULT VALUES",
            f"UPDATE {table} SET {col} = {col}",  # noqa: S608 - catalog names
            f"DELETE FROM {table}",  # noqa: S608 - catalog names
            f"TRUNCATE {table}",
            f"LOCK TABLE {table} IN ACCESS SHARE MODE",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                async with reader.transaction():  # LOCK needs one; the others don't mind
                    await reader.execute(statement)
    sequences = await names(
        db, "SELECT format('%I.%I', schemaname, sequencename) FROM pg_sequences ORDER BY 1"
    )
    assert sequences
    for seq in sequences:
        read = f"SELECT last_value FROM {seq}"  # noqa: S608 - catalog names
        for statement in (f"SELECT nextval('{seq}')", read):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await reader.execute(statement)


async def test_views_cannot_be_written_through(
    db: asyncpg.Connection, reader: asyncpg.Connection
) -> None:
    # A view over a single table is updatable in PostgreSQL: a write through it needs its own
    # privilege. Any other view refuses the write before the privileges are checked.
    updatable = set(
        await names(
            db,
            "SELECT format('%I.%I', schemaname, viewname) FROM pg_views "
            "WHERE schemaname = 'keeper' "
            "AND pg_relation_is_updatable(format('%I.%I', schemaname, viewname), false) <> 0",
        )
    )
    for view in await views(db):
        expected = (
            asyncpg.InsufficientPrivilegeError
            if view in updatable
            else (asyncpg.InsufficientPrivilegeError, asyncpg.ObjectNotInPrerequisiteStateError)
        )
        with pytest.raises(expected):
            await reader.execute(f"DELETE FROM {view}")  # noqa: S608 - catalog names


async def test_nothing_can_be_created(reader: asyncpg.Connection) -> None:
    for schema in ("public", "keeper"):
        for statement in (
            f"CREATE TABLE {schema}.reader_was_here (id int)",
            f"CREATE VIEW {schema}.reader_was_here AS SELECT 1 AS one",
            f"CREATE FUNCTION {schema}.reader_was_here() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await reader.execute(statement)
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await reader.execute("CREATE SCHEMA reader_was_here")


async def test_write_functions_are_refused_view_functions_allowed(
    db: asyncpg.Connection, reader: asyncpg.Connection
) -> None:
    # Every plain function in schema public (the trigger functions cannot be called directly).
    functions = await db.fetch(
        """
        SELECT p.oid::regprocedure::text AS signature, p.pronargs
        FROM pg_proc p
        WHERE p.pronamespace = 'public'::regnamespace AND p.prokind = 'f'
          AND p.prorettype <> 'trigger'::regtype
        ORDER BY 1
        """
    )
    assert "delete_events_after(bigint,bigint)" in {f["signature"] for f in functions}
    for f in functions:
        name = f["signature"].split("(")[0]
        args = ", ".join(["NULL"] * f["pronargs"])
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="function"):
            await reader.execute(f"SELECT {name}({args})")
    # Nothing was deleted, and the views' own functions still work for the reader.
    assert await db.fetchval("SELECT count(*) FROM streams") == 1
    assert await reader.fetchval("SELECT keeper.hex('\\xabcd'::bytea)") == "0xabcd"
    assert await reader.fetchval("SELECT keeper.fee_of(10000, 250)") == 250


async def test_views_of_a_later_migration_are_readable(
    database_url: str, db: asyncpg.Connection, reader: asyncpg.Connection
) -> None:
    # What a later migration does, as the migrating role: the default privileges apply.
    await db.execute("CREATE VIEW keeper.later_view AS SELECT chain_id FROM public.chains")
    await db.execute("CREATE FUNCTION keeper.later_fn() RETURNS int LANGUAGE sql AS 'SELECT 7'")
    await db.execute("CREATE FUNCTION public.later_write() RETURNS int LANGUAGE sql AS 'SELECT 1'")
    assert await reader.fetch("SELECT * FROM keeper.later_view") == await db.fetch(
        "SELECT * FROM keeper.later_view"
    )
    assert await reader.fetchval("SELECT keeper.later_fn()") == 7
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await reader.execute("SELECT public.later_write()")


async def test_the_role_itself_cannot_log_in(database_url: str) -> None:
    with pytest.raises(keeper_db.DatabaseUnavailable):
        await keeper_db.connect(as_user(database_url, "keeper_reader"), timeout=5)


# The privileges that `schema_catalog` (test_migrations) does not cover: it compares the ACLs
# of relations only. Schemas, functions and default privileges are compared here.
PRIVILEGES = """
SELECT 'schema ' || nspname, coalesce(nspacl::text, '')
FROM pg_namespace WHERE nspname IN ('public', 'keeper')
UNION ALL
SELECT 'function ' || p.oid::regprocedure::text, coalesce(p.proacl::text, '')
FROM pg_proc p WHERE p.pronamespace IN ('public'::regnamespace, 'keeper'::regnamespace)
UNION ALL
SELECT 'default ' || pg_get_userbyid(d.defaclrole) || ' '
       || coalesce(d.defaclnamespace::regnamespace::text, '*') || ' ' || d.defaclobjtype::text,
       d.defaclacl::text
FROM pg_default_acl d
"""


async def privileges(url: str) -> set[tuple[str, str]]:
    conn = await keeper_db.connect(url)
    try:
        return {(r[0], r[1]) for r in await conn.fetch(PRIVILEGES)}
    finally:
        await conn.close()


async def test_declared_schema_grants_what_the_migrations_grant(
    database_factory: Callable[..., str],
) -> None:
    migrated_url, declared_url = database_factory(), database_factory()
    await migrate(migrated_url)
    await _admin(declared_url, resources.read_sql("schema.sql"))

    migrated, declared = await privileges(migrated_url), await privileges(declared_url)

    assert migrated == declared
    granted = dict(migrated)
    assert "keeper_reader=U/" in granted["schema keeper"]
    assert granted["function delete_events_after(bigint,bigint)"].count("=") == 1  # owner only
    assert any(k.endswith(" keeper r") and "keeper_reader=r/" in v for k, v in migrated)


def _role_block(sql: str, role: str) -> str:
    """The migration's role-creating DO block, for another role name."""
    match = re.search(r"^DO \$\$.*?^\$\$;", sql, re.DOTALL | re.MULTILINE)
    assert match, "no DO block in 0010_reader_role.sql"
    return match[0].replace("keeper_reader", role)


async def test_role_creation_tolerates_a_concurrent_creation(database_server_url: str) -> None:
    """Two databases migrating at once both find the role missing: the second CREATE ROLE
    waits for the first transaction and must then pass, not fail the migration."""
    (sql,) = [s for name, s in resources.migration_files() if name == "0010_reader_role.sql"]
    role = unique_role_name()
    block = _role_block(sql, role)
    first = await keeper_db.connect(database_server_url)
    second = await keeper_db.connect(database_server_url)
    try:
        tx = first.transaction()
        await tx.start()
        await first.execute(block)  # created, not committed: invisible to `second`
        async with anyio.create_task_group() as tg:
            tg.start_soon(second.execute, block)  # blocks on the role name
            await anyio.sleep(0.5)
            await tx.commit()
        # Both done without error, and a third run finds the role there.
        await second.execute(block)
        assert await second.fetchval("SELECT count(*) FROM pg_roles WHERE rolname = $1", role) == 1
    finally:
        await second.execute(f"DROP ROLE IF EXISTS {role}")
        await first.close()
        await second.close()
