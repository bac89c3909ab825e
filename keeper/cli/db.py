"""`keeper migrate`: apply the database migrations."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from keeper.cli.common import DATABASE_URL_ENV, Formatter, add_database_url, database_url


def cmd_migrate(args: argparse.Namespace) -> int:
    """Apply the database migrations."""
    import anyio

    from keeper.db import redact_dsn
    from keeper.db.migrations import migrate

    if args.config is not None:
        from keeper.config_load import load_config

        dsn = load_config(args.config).database.url.get_secret_value()
    else:
        dsn = database_url(args)
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
    target = migrate.add_mutually_exclusive_group()
    target.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="the keeper's TOML configuration: migrate the database of its database.url",
    )
    add_database_url(target)
    migrate.set_defaults(handler=cmd_migrate)
