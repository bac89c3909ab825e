"""Apply the ordered migration files in `sql/migrations/` to a database.

Each file is applied once, in its own transaction together with its row in
`keeper_migrations` (name, SHA-256 of the file, time), so a failing migration leaves neither
a half-applied schema nor a record. Everything runs under a session-level Postgres advisory
lock, `MIGRATION_LOCK_KEY`, so several keepers starting at once against one database (or an
operator running `keeper migrate` by hand meanwhile) queue up instead of racing: the first
applies, the others then find nothing to do.

A file that was edited after it was applied is refused (`MigrationChanged`): the database no
longer matches what the file says, and the fix is a new migration file, never an edit.
"""

from __future__ import annotations

import hashlib

import anyio
import asyncpg
import structlog

from keeper import db, resources
from keeper.db.queries import load_queries
from keeper.errors import PermanentError

log = structlog.get_logger(__name__)

# The advisory-lock key of the migration lock: ASCII "keeper" followed by 0x0001. Other keeper
# locks (e.g. the leader lock) use the same prefix with a different suffix so they never collide.
MIGRATION_LOCK_KEY = 0x6B65_6570_6572_0001


class MigrationChanged(PermanentError):
    """A migration file was changed after it was applied to this database."""

    def __init__(self, name: str, applied_sha256: str, file_sha256: str) -> None:
        super().__init__(
            f"migration {name} was changed after it was applied "
            f"(applied sha256 {applied_sha256}, file now {file_sha256})",
            help=f"restore {name} to the version that was applied and put the change "
            "in a new migration file",
        )
        self.name = name
        self.applied_sha256 = applied_sha256
        self.file_sha256 = file_sha256


class UnknownMigration(PermanentError):
    """The database records a migration this keeper does not ship."""

    def __init__(self, name: str) -> None:
        super().__init__(
            f"the database has migration {name} applied, which this keeper does not know",
            help="the database was migrated by a newer keeper: upgrade this keeper",
        )
        self.name = name


def file_sha256(sql: str) -> str:
    """The checksum recorded for a migration: SHA-256 of its UTF-8 text, in hex."""
    return hashlib.sha256(sql.encode("utf-8")).hexdigest()


async def migrate(conn_or_dsn: asyncpg.Connection | str) -> list[str]:
    """Apply the migrations not yet applied; return their names (empty when up to date).

    Given a DSN, opens and closes its own connection; given a connection, leaves it open
    (it must not be inside a transaction). Raises `MigrationChanged` or `UnknownMigration`
    before applying anything if the recorded history does not match the shipped files.
    """
    if isinstance(conn_or_dsn, str):
        conn = await db.connect(conn_or_dsn)
        try:
            return await _migrate(conn)
        finally:
            with anyio.CancelScope(shield=True):
                await conn.close()
    return await _migrate(conn_or_dsn)


async def _migrate(conn: asyncpg.Connection) -> list[str]:
    queries = load_queries()
    await conn.execute(queries["acquire_migration_lock"], MIGRATION_LOCK_KEY)
    try:
        await conn.execute(queries["create_migrations_table"])
        applied = {r["name"]: r["sha256"] for r in await conn.fetch(queries["applied_migrations"])}
        files = [(name, sql, file_sha256(sql)) for name, sql in resources.migration_files()]
        _check_history(applied, files)
        done: list[str] = []
        for name, sql, sha in files:
            if name in applied:
                continue
            async with conn.transaction():
                # Tables belong in `public` whatever the role is called: the default search
                # path starts with "$user", and a role named `keeper` would otherwise put them
                # into the views schema.
                await conn.execute(queries["pin_search_path"])
                await conn.execute(sql)
                await conn.execute(queries["record_migration"], name, sha)
            log.info("migration_applied", migration=name, sha256=sha)
            done.append(name)
        return done
    finally:
        # Shielded so that a cancelled caller still hands the lock back on a connection it
        # keeps using (a failed migration has been rolled back by then). A closed connection
        # has lost the lock with its session already.
        if not conn.is_closed():
            with anyio.CancelScope(shield=True):
                await conn.execute(queries["release_migration_lock"], MIGRATION_LOCK_KEY)


def _check_history(applied: dict[str, str], files: list[tuple[str, str, str]]) -> None:
    shipped = {name: sha for name, _, sha in files}
    for name, sha in sorted(applied.items()):
        if name not in shipped:
            raise UnknownMigration(name)
        if shipped[name] != sha:
            raise MigrationChanged(name, sha, shipped[name])
