"""`keeper migrate`: apply the database migrations."""

from __future__ import annotations

import argparse
from typing import Any

from keeper.cli.common import (
    DATABASE_URL_ENV,
    Formatter,
    add_database_target,
    target_database_url,
)


def cmd_migrate(args: argparse.Namespace) -> int:
    """Apply the database migrations."""
    import anyio

    from keeper.db import redact_dsn
    from keeper.db.migrations import migrate

    dsn = target_database_url(args)
    applied = anyio.run(migrate, dsn)
    for name in applied:
        print(f"applied {name}")
    if not applied:
        print(f"{redact_dsn(dsn)} is up to date")
    return 0


def add_parser(sub: Any) -> None:
    """`keeper migrate [--config FILE | --database-url DSN]`."""
    migrate = sub.add_parser(
        "migrate",
        formatter_class=Formatter,
        help="apply the database migrations",
        description=(
            "Apply the migrations this keeper ships that the database lacks, each in its own\n"
            "transaction, and print their names. Safe to run while other keepers start: a\n"
            "lock serialises concurrent runs. The database is the one of --config FILE\n"
            "(database.url, or KEEPER_DATABASE__URL), else --database-url, else\n"
            f"${DATABASE_URL_ENV}."
        ),
    )
    add_database_target(
        migrate, "the keeper's TOML configuration: migrate the database of its database.url"
    )
    migrate.set_defaults(handler=cmd_migrate)
