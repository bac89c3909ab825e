"""`keeper migrate`: apply the database migrations; `keeper retire`: one retention run."""

from __future__ import annotations

import argparse
from typing import Any

from keeper.cli.common import (
    CONFIG_HELP,
    DATABASE_URL_ENV,
    Formatter,
    add_config,
    add_database_target,
    add_json,
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


def cmd_retire(args: argparse.Namespace) -> int:
    """Retire what is due now, as the daemon's retention loop does (or count it: --dry-run)."""
    import json

    import anyio

    from keeper.config_load import load_config

    config = load_config(args.config)
    result = anyio.run(_retire, config, args.dry_run)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    verb = {"archive": "archived", "delete": "deleted"}[result["mode"]]
    if args.dry_run:
        verb = f"would be {verb}"
    if result["finalized_block"] is None:
        print(f"chain {result['chain_id']}: no finalized block indexed yet, nothing to retire")
        return 0
    rows = ", ".join(f"{n} {table}" for table, n in result["rows"].items())
    print(
        f"chain {result['chain_id']}: rows finished more than {result['keep_days']} days ago, "
        f"at or below finalized block {result['finalized_block']}, {verb}: {rows} "
        f"({result['batches']} batches)"
    )
    if result["lock_timeouts"]:
        print("stopped early: a lock was not granted within 2 s; run it again")
    return 0


async def _retire(config: Any, dry_run: bool) -> dict[str, Any]:
    from keeper import db
    from keeper.db.retention import Retention

    chain_id = config.deployment().chain_id
    retention = Retention(chain_id, config.retention)
    conn = await db.connect(config.database.url.get_secret_value())
    try:
        if dry_run:
            # The same batches, in one transaction rolled back at the end.
            outer = conn.transaction()
            await outer.start()
            try:
                run = await retention.run(conn)
            finally:
                await outer.rollback()
        else:
            run = await retention.run(conn)
    finally:
        await conn.close()
    return {
        "chain_id": chain_id,
        "mode": config.retention.mode,
        "keep_days": config.retention.keep_days,
        "dry_run": dry_run,
        "finalized_block": run.finalized_block,
        "batches": run.batches,
        "lock_timeouts": run.lock_timeouts,
        "rows": run.rows,
    }


def add_parser(sub: Any) -> None:
    """`keeper migrate [--config FILE | --database-url DSN]` and
    `keeper retire --config FILE [--dry-run] [--json]`."""
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
    retire = sub.add_parser(
        "retire",
        formatter_class=Formatter,
        help="retire old finished intents and reconciled usage now (retention)",
        description=(
            "One retention run, as the daemon's background loop makes every\n"
            'retention.interval seconds (README, "Retention"): finished intents with their\n'
            "attempts, items and faults, and reconciled usage rows, older than\n"
            "retention.keep_days and at or below the finalized block, are moved into schema\n"
            'archive (retention.mode = "archive") or deleted, in batches of\n'
            "retention.batch_rows, each its own transaction. Runs whatever\n"
            "retention.enabled says; safe next to a running daemon. --dry-run does the same\n"
            "work in one transaction and rolls it back: it prints what would go, and on a\n"
            "long history it takes as long as the real run."
        ),
    )
    add_config(retire, CONFIG_HELP)
    retire.add_argument(
        "--dry-run", action="store_true", help="count what would go, change nothing"
    )
    add_json(retire)
    retire.set_defaults(handler=cmd_retire)
