"""The demo's database: an embedded PostgreSQL (pgserver) under the data directory, or one the
operator runs, migrated and holding the demo's deployment.

The embedded database `keeper_demo` is dropped and created afresh on every run, because the
chain it describes is new on every run too; the server's files stay in the data directory, so
a second run starts faster.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from keeper import db
from keeper.chain.deployment import Deployment
from keeper.db.migrations import migrate
from keeper.db.queries import load_queries
from keeper.dev.demo_chain import DemoError

DEMO_DATABASE = "keeper_demo"


class PgserverMissing(DemoError):
    """The embedded PostgreSQL (the `pgserver` package) is not installed."""

    def __init__(self) -> None:
        super().__init__(
            help="install the dev extra: pip install 'keeper[dev]' (`make demo` does), "
            "or pass --database-url to use a PostgreSQL you run yourself",
        )


@dataclass
class EmbeddedPostgres:
    """A pgserver-managed PostgreSQL running from files under the demo's data directory."""

    server: Any
    dsn: str
    psql: Path

    def stop(self) -> None:
        """Stop the server (its files stay, so the next start is quick)."""
        self.server.cleanup()


def start_embedded_postgres(data_dir: Path) -> EmbeddedPostgres:
    """Start (initialising on first use) a PostgreSQL in `data_dir/pgdata`; fresh demo DB."""
    try:
        with warnings.catch_warnings():
            # platformdirs warns at import when XDG_RUNTIME_DIR is unset (containers, CI).
            warnings.simplefilter("ignore")
            from pgserver._commands import POSTGRES_BIN_PATH
            from pgserver.postgres_server import get_server
    except ImportError:
        raise PgserverMissing() from None
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        server = get_server(data_dir / "pgdata", cleanup_mode="stop")
    except Exception as exc:
        raise DemoError(
            f"the embedded PostgreSQL in {data_dir / 'pgdata'} did not start: {exc}",
            help=f"see {data_dir / 'pgdata' / 'log'}; deleting {data_dir} starts from scratch",
        ) from exc
    try:
        anyio.run(_recreate_database, str(server.get_uri()), DEMO_DATABASE)
    except BaseException:
        server.cleanup()
        raise
    return EmbeddedPostgres(
        server=server,
        dsn=str(server.get_uri(database=DEMO_DATABASE)),
        psql=Path(POSTGRES_BIN_PATH) / "psql",
    )


async def _recreate_database(server_dsn: str, name: str) -> None:
    conn = await db.connect(server_dsn)
    try:
        # `name` is our constant, not input: identifiers cannot be bound as parameters.
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def prepare_database(dsn: str, deployment: Deployment, chain_name: str) -> list[str]:
    """Migrate the database at `dsn` and record `deployment`; return the migrations applied."""
    applied = await migrate(dsn)
    queries = load_queries()
    conn = await db.connect(dsn)
    try:
        async with conn.transaction():
            await conn.execute(queries["upsert_chain"], deployment.chain_id, chain_name)
            for name, address in deployment_addresses(deployment).items():
                await conn.execute(
                    queries["upsert_deployment"],
                    deployment.chain_id,
                    name,
                    bytes.fromhex(address[2:]),
                    deployment.deployment_block,
                )
    finally:
        await conn.close()
    return applied


async def deployment_rows(dsn: str, chain_id: int) -> list[tuple[str, str, int]]:
    """The `deployments` rows of `chain_id` as (name, 0x-address, deployment block)."""
    conn = await db.connect(dsn)
    try:
        rows = await conn.fetch(load_queries()["deployment_rows"], chain_id)
    finally:
        await conn.close()
    return [(r["name"], "0x" + bytes(r["address"]).hex(), r["deployment_block"]) for r in rows]


def deployment_addresses(deployment: Deployment) -> dict[str, str]:
    """The contract addresses under the names the `deployments` table uses."""
    return {
        "token": deployment.token,
        "stream_manager": deployment.stream_manager,
        "escrow_vault": deployment.escrow_vault,
    }


def safe_dsn(dsn: str, pg: EmbeddedPostgres | None) -> str:
    """`dsn` as printed: as is for the embedded server, with any password masked otherwise."""
    # The embedded server trusts local connections (no password), and masking its empty
    # password would break the psql line; a URL the operator gave us may hold a real one.
    return dsn if pg is not None else db.redact_dsn(dsn)


def psql_command(dsn: str, pg: EmbeddedPostgres | None) -> str:
    """The psql command line that connects to the demo's database."""
    psql = str(pg.psql) if pg is not None else "psql"
    return f"{psql} '{safe_dsn(dsn, pg)}'"
