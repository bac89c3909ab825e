"""`keeper migrate`: apply the database migrations; `keeper retire`: one retention run;
`keeper db archive-events`: archive old event partitions."""

from __future__ import annotations

import argparse
from typing import Any

from keeper.cli.common import (
    CONFIG_HELP,
    DATABASE_URL_ENV,
    Formatter,
    add_config,
    add_database_target,
    add_group,
    add_json,
    chain_id,
    number,
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


def cmd_archive_events(args: argparse.Namespace) -> int:
    """Archive the event partitions wholly below --below."""
    import json

    import anyio

    from keeper import db
    from keeper.ops.partitions import ArchiveReport, archive_events

    dsn = target_database_url(args)
    size = args.partition_blocks
    if size is None:
        from keeper.config import IngestConfig

        if args.config is not None:
            from keeper.config_load import load_config

            size = load_config(args.config).ingest.partition_blocks
        else:
            size = IngestConfig().partition_blocks

    async def run() -> ArchiveReport:
        conn = await db.connect(dsn)
        try:
            return await archive_events(
                conn, args.chain_id, args.below, partition_blocks=size, dry_run=args.dry_run
            )
        finally:
            await conn.close()

    report = anyio.run(run)
    print(json.dumps(report.as_dict()) if args.json else report.text())
    return 0


def _block(text: str) -> int:
    return number(text, int, "a block number", lambda v: 0 <= v < 2**63, "must be >= 0")


def _blocks(text: str) -> int:
    return number(text, int, "a number of blocks", lambda v: 0 < v < 2**63, "must be >= 1")


def add_parser(sub: Any) -> None:
    """`keeper migrate [--config FILE | --database-url DSN]`,
    `keeper retire --config FILE [--dry-run] [--json]` and `keeper db archive-events`."""
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
    db_sub = add_group(
        sub,
        "db",
        "database upkeep: archive the event partitions of old blocks",
        "Upkeep of the keeper's database.",
    )
    archive = db_sub.add_parser(
        "archive-events",
        formatter_class=Formatter,
        help="move the event partitions of old, finalized blocks into schema archive",
        description=(
            "The event tables are partitioned by chain and block range (partition_blocks\n"
            "blocks each, created as the indexer reaches them). Archive every range of the\n"
            "chain wholly below block BLOCK: each event table's partition of it is detached\n"
            "and moved, whole, into schema archive (archive.<table>_<chain>_<first block>),\n"
            "and a new partition in its place keeps only the rows the projections are\n"
            "recomputed from (stream and escrow creations, closes, claims, price and\n"
            "parameter changes; the newest balance, rate and vault events of each stream\n"
            "and account). The projections, and so `keeper verify`, are unchanged; views\n"
            "that sum event history (usage_daily, settlement totals) count what is still\n"
            "attached, so archive below the history they should show.\n\n"
            "BLOCK must be at most the chain's finalized and indexed block + 1: no rollback\n"
            "reaches below it. Rows of the DEFAULT partitions below BLOCK (written before\n"
            "the tables were partitioned) are first moved into ranges of partition_blocks\n"
            "blocks, so that they are archived too. Each range is archived in a transaction\n"
            "of its own, with a short ACCESS EXCLUSIVE lock on each event table; a range\n"
            "archived before is skipped. The database is the one of --config FILE\n"
            "(database.url, or KEEPER_DATABASE__URL), else --database-url, else\n"
            f"${DATABASE_URL_ENV}."
        ),
    )
    archive.add_argument(
        "--chain-id", type=chain_id, required=True, metavar="N", help="the chain to archive"
    )
    archive.add_argument(
        "--below",
        type=_block,
        required=True,
        metavar="BLOCK",
        help="archive the ranges whose blocks are all below this one",
    )
    archive.add_argument(
        "--partition-blocks",
        type=_blocks,
        metavar="N",
        help="size of the ranges made for rows of the DEFAULT partitions; default: "
        "[ingest] partition_blocks of --config, else its default",
    )
    archive.add_argument(
        "--dry-run", action="store_true", help="list the ranges it would archive, change nothing"
    )
    add_database_target(
        archive, "the keeper's TOML configuration: the database of its database.url"
    )
    add_json(archive, "print the report as one JSON object instead")
    archive.set_defaults(handler=cmd_archive_events)
