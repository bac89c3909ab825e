"""`keeper migrate`: apply the database migrations; `keeper db archive-events`: archive old
event partitions."""

from __future__ import annotations

import argparse
from typing import Any

from keeper.cli.common import (
    DATABASE_URL_ENV,
    Formatter,
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
    """`keeper migrate [--config FILE | --database-url DSN]`, `keeper db archive-events`."""
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
