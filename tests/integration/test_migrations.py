"""Migrations against a real PostgreSQL: the migrated schema is the declared one, re-running
is a no-op, concurrent runs are serialized, and an edited migration is refused."""

from __future__ import annotations

import re
from collections.abc import Callable

import anyio
import asyncpg
import pytest

from keeper import db, resources
from keeper.db.migrations import MigrationChanged, UnknownMigration, migrate
from keeper.db.queries import load_queries

pytestmark = pytest.mark.anyio

Catalog = set[tuple[str, str, str]]

# Created by migrate() itself as bookkeeping, so it is not part of the declared schema
# (the prefix also covers its columns, primary key and index).
BOOKKEEPING = "public.keeper_migrations"


async def catalog(url: str) -> Catalog:
    """The database's schema as a set of (kind, object, definition), bookkeeping left out."""
    conn = await db.connect(url)
    try:
        rows = await conn.fetch(load_queries()["schema_catalog"])
    finally:
        await conn.close()
    return {
        (r["kind"], r["object"], r["definition"])
        for r in rows
        if not r["object"].startswith(BOOKKEEPING)
    }


async def applied(url: str) -> list[str]:
    conn = await db.connect(url)
    try:
        return [r["name"] for r in await conn.fetch(load_queries()["applied_migrations"])]
    finally:
        await conn.close()


def shipped_names() -> list[str]:
    return [name for name, _ in resources.migration_files()]


async def test_migrated_schema_equals_declared_schema(
    database_factory: Callable[..., str],
) -> None:
    migrated_url, declared_url = database_factory(), database_factory()
    assert await migrate(migrated_url) == shipped_names()
    conn = await db.connect(declared_url)
    try:
        await conn.execute(resources.read_sql("schema.sql"))
    finally:
        await conn.close()

    migrated, declared = await catalog(migrated_url), await catalog(declared_url)

    assert {kind for kind, _, _ in declared} >= {"column", "constraint", "index", "relation"}
    only_migrated = sorted(migrated - declared)
    only_declared = sorted(declared - migrated)
    assert (only_migrated, only_declared) == ([], []), (
        "sql/migrations/ and sql/schema.sql disagree "
        f"(only after migrate: {only_migrated}; only in schema.sql: {only_declared})"
    )


async def test_second_migrate_is_a_noop(empty_database_url: str) -> None:
    assert await migrate(empty_database_url) == shipped_names()
    before = await catalog(empty_database_url)

    assert await migrate(empty_database_url) == []

    assert await catalog(empty_database_url) == before
    assert await applied(empty_database_url) == shipped_names()


async def test_migrate_on_a_connection_leaves_it_usable_and_unlocked(
    empty_database_url: str,
) -> None:
    conn = await db.connect(empty_database_url)
    try:
        await migrate(conn)
        held = await conn.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
        )
        assert held == 0
        assert await conn.fetchval("SELECT count(*) FROM deployments") == 0
    finally:
        await conn.close()


async def test_concurrent_migrations_apply_each_file_once(
    empty_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A slow extra migration keeps the first runner inside the lock long enough for the
    # others to arrive and wait on it, so the test really exercises the contention.
    files = [*resources.migration_files(), ("9999_slow.sql", "SELECT pg_sleep(0.5);")]
    monkeypatch.setattr(resources, "migration_files", lambda: files)
    results: list[list[str]] = []

    async def run() -> None:
        results.append(await migrate(empty_database_url))

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(run)

    names = [name for name, _ in files]
    assert sorted(name for result in results for name in result) == names
    assert sorted(results, key=len) == [[], [], names]
    assert await applied(empty_database_url) == names


async def test_failed_migration_rolls_back_and_releases_the_lock(
    empty_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = resources.migration_files()
    broken = ("9998_broken.sql", "CREATE TABLE half_done (id int); SELECT * FROM no_such_table;")
    monkeypatch.setattr(resources, "migration_files", lambda: [*good, broken])

    with pytest.raises(asyncpg.UndefinedTableError):
        await migrate(empty_database_url)

    # The good migrations stay applied; the broken one left neither a table nor a record.
    assert await applied(empty_database_url) == [name for name, _ in good]
    objects = {obj for _, obj, _ in await catalog(empty_database_url)}
    assert not any("half_done" in obj for obj in objects)

    # The lock was released: once the file is fixed, the next run goes through.
    fixed = ("9998_broken.sql", "CREATE TABLE half_done (id int);")
    monkeypatch.setattr(resources, "migration_files", lambda: [*good, fixed])
    with anyio.fail_after(10):
        assert await migrate(empty_database_url) == ["9998_broken.sql"]


async def test_changed_migration_is_refused(
    empty_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await migrate(empty_database_url)
    original = resources.migration_files()
    first_name, first_sql = original[0]
    edited = [(first_name, first_sql + "\n-- an innocent-looking edit\n"), *original[1:]]
    new = ("9999_new.sql", "CREATE TABLE should_not_exist (id int);")
    monkeypatch.setattr(resources, "migration_files", lambda: [*edited, new])

    with pytest.raises(MigrationChanged, match=re.escape(first_name)) as caught:
        await migrate(empty_database_url)

    assert caught.value.name == first_name
    assert caught.value.help
    # Refused before applying anything.
    assert await applied(empty_database_url) == [name for name, _ in original]


async def test_migration_unknown_to_this_keeper_is_refused(
    empty_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = resources.migration_files()
    newer = ("9999_from_the_future.sql", "SELECT 1;")
    monkeypatch.setattr(resources, "migration_files", lambda: [*original, newer])
    await migrate(empty_database_url)
    monkeypatch.setattr(resources, "migration_files", lambda: original)

    with pytest.raises(UnknownMigration, match=re.escape("9999_from_the_future.sql")):
        await migrate(empty_database_url)


async def test_template_databases_are_migrated(db: asyncpg.Connection) -> None:
    """The `database_url`/`db` fixtures give a fully migrated database."""
    rows = await db.fetch(load_queries()["applied_migrations"])
    assert [r["name"] for r in rows] == shipped_names()


async def test_unreachable_database_is_a_typed_error() -> None:
    with pytest.raises(db.DatabaseUnavailable) as caught:
        await db.connect("postgresql://nobody:secret@127.0.0.1:1/nothing", timeout=5)
    assert "secret" not in str(caught.value)
    assert caught.value.help


async def test_keeper_connections_run_without_jit(empty_database_url: str) -> None:
    conn = await db.connect(empty_database_url, server_settings={"application_name": "t"})
    try:
        assert await conn.fetchval("SHOW jit") == "off"
        assert await conn.fetchval("SHOW application_name") == "t"
    finally:
        await conn.close()
    pool = await db.create_pool(empty_database_url, min_size=1, max_size=1)
    try:
        assert await pool.fetchval("SHOW jit") == "off"
    finally:
        await pool.close()
