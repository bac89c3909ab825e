"""`keeper backfill` and `keeper verify`: the index filled from the chain, checked against it."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from keeper.cli.common import Formatter, add_config, add_json, configure_logging, number
from keeper.errors import KeeperError


def _block(text: str) -> int:
    return number(
        text, lambda t: int(t, 0), "a block number", lambda v: v >= 0, "must not be negative"
    )


def cmd_backfill(args: argparse.Namespace) -> int:
    """Index a range of finalized blocks into the database, with a progress line."""
    import anyio

    from keeper.config_load import load_config
    from keeper.ingest.backfill import BackfillResult, run_backfill
    from keeper.progress import ProgressLine

    config = load_config(args.config)
    deployment = config.deployment()
    if sys.stderr.isatty() and args.log_level == "info":
        # On a terminal the progress line stands for the indexer's own progress log lines.
        configure_logging("warning")
    progress = ProgressLine.on(sys.stderr, interval=config.ingest.progress_interval)

    async def run() -> BackfillResult:
        return await run_backfill(
            config, deployment, start=args.from_block, end=args.to_block, progress=progress
        )

    try:
        result = anyio.run(run)
    finally:
        progress.close()
    if result.checked is not None:
        first, last = result.checked
        if result.differences:
            print(f"blocks {first}..{last}: the database differs from the chain's logs")
            for table, (mine, theirs) in sorted(result.differences.items()):
                print(f"  {table}: {mine} events in the database, {theirs} on the chain")
            raise KeeperError(
                f"the index of blocks {first}..{last} does not match the chain; nothing was "
                "written",
                help="`keeper verify` compares the projections with the contracts; an index "
                "that differs from the chain is rebuilt by indexing into an empty database",
            )
        print(
            f"blocks {first}..{last} were indexed already: {result.checked_events:,} events "
            "re-read from the node, the same number of each kind as in the database"
        )
    if result.written is not None:
        first, last = result.written
        rate = (last - first + 1) / result.seconds if result.seconds > 0 else 0.0
        print(
            f"indexed blocks {first}..{last}: {result.events:,} events in "
            f"{result.seconds:.1f} s ({rate:,.0f} blocks/s); the index ends at block {last} "
            f"(finalized: {result.finalized})"
        )
    elif result.checked is None:
        print(
            f"nothing to do: the index ends at block {result.indexed_before}, the finalized "
            f"block is {result.finalized}"
        )
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Compare the index with the contracts at the indexed block; exit 1 on any difference."""
    import json

    import anyio

    from keeper.config_load import load_config
    from keeper.ops.verify import Report

    config = load_config(args.config)
    deployment = config.deployment()

    async def run() -> Report:
        from keeper import db
        from keeper.chain import preflight
        from keeper.ops.verify import verify

        client = config.chain.client()
        try:
            await preflight.check_chain(config, deployment, client)
            conn = await db.connect(config.database.url.get_secret_value())
            try:
                return await verify(conn, client, deployment, block=args.block)
            finally:
                await conn.close()
        finally:
            await client.close()

    report = anyio.run(run)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
        return 0 if report.ok else 1
    for difference in report.differences:
        print(difference.text())
    outcome = (
        "the database matches the contracts"
        if report.ok
        else f"{len(report.differences)} difference{'s' if len(report.differences) > 1 else ''}"
    )
    print(
        f"chain {report.chain_id} at block {report.block} ({report.block_hash}): "
        f"{report.streams:,} streams, {report.escrows:,} escrows, {report.accounts:,} accounts "
        f"and the contract parameters compared: {outcome}"
    )
    return 0 if report.ok else 1


def add_parsers(sub: Any) -> None:
    """`keeper backfill --config FILE [--from N] [--to M]` and `keeper verify --config FILE`."""
    backfill = sub.add_parser(
        "backfill",
        formatter_class=Formatter,
        help="index a range of finalized blocks (with a progress bar), then exit",
        description=(
            "Index the contracts' events of blocks --from..--to into the database, with the\n"
            "daemon's own backfill (adaptive eth_getLogs ranges, COPY, one transaction per\n"
            "range together with the cursor: an interrupted backfill resumes where it\n"
            "stopped), then exit. The database must be migrated (`keeper migrate`).\n\n"
            "The index stays contiguous and final:\n"
            "  --from  defaults to the block after the indexed one (the deployment block on\n"
            "          an empty database). A higher --from is refused: it would leave a gap.\n"
            "          A lower one re-reads blocks already indexed, from --from up to the\n"
            "          indexed block, and compares the number of events of each kind with\n"
            "          the database, writing nothing for them; on a difference it stops\n"
            "          before writing anything and exits 1.\n"
            "  --to    defaults to the node's finalized block and may not exceed it: blocks\n"
            "          above it may still be reorganised and are indexed by `keeper run`,\n"
            "          which checks their parent hashes. Reaching the finalized block marks\n"
            "          the backfill done (the planners of `keeper run` wait for that).\n"
            "Before writing, the chain is checked as `keeper check-config` does, and the\n"
            "indexed block must still be on the node's chain (else `keeper run` must roll\n"
            "the index back first).\n\n"
            "Safe while `keeper run` runs on the same chain and database: every write claims\n"
            "the cursor, and if the daemon moved it meanwhile, this command stops with an\n"
            "error and nothing of its current range is written (the daemon indexes on).\n\n"
            "Progress goes to stderr: on a terminal one line rewritten in place (blocks\n"
            "done/total, percent, blocks/s, events, ETA; the indexer's info log lines are\n"
            "then hidden, see --log-level), otherwise a plain line every\n"
            "ingest.progress_interval seconds. A summary goes to stdout.\n"
            "Exit status 0 when done (or nothing to do), 1 on an error or a difference."
        ),
    )
    add_config(backfill)
    backfill.add_argument(
        "--from",
        dest="from_block",
        type=_block,
        metavar="N",
        help="first block; default: the block after the indexed one (see above)",
    )
    backfill.add_argument(
        "--to",
        dest="to_block",
        type=_block,
        metavar="M",
        help="last block, at most the finalized one; default: the finalized block",
    )
    backfill.set_defaults(handler=cmd_backfill)

    verify = sub.add_parser(
        "verify",
        formatter_class=Formatter,
        help="compare the index with the contracts by eth_call at one block",
        description=(
            "Re-read the contracts' state with eth_call at the indexed block and compare it\n"
            "with the database's projections of that block: every stream (payer, payee,\n"
            "balance, rate, settled_at, usage sequence, price, status), every escrow (payer,\n"
            "payee, amount, expiry, status), what each account can claim from StreamManager\n"
            "(credited) and holds in EscrowVault (available, locked), and the fee, fee\n"
            "recipient and pause flags. Accounts are those the index or the streams and\n"
            "escrows name. The projections are read in one snapshot with the cursor and the\n"
            "calls are pinned to the block's hash (EIP-1898), in JSON-RPC batches, so this\n"
            "is safe and consistent while `keeper run` indexes. The node must still have\n"
            "the state of that block (a pruned node keeps the recent ones only).\n\n"
            "Each difference is printed as `<kind> <id> <field>: database <value>, chain\n"
            "<value>`, then a summary. Exit status 0 when the database matches the\n"
            "contracts, 1 when anything differs (or on an error), 2 on a usage error."
        ),
    )
    add_config(verify)
    verify.add_argument(
        "--block",
        type=_block,
        metavar="N",
        help="the block to verify at; must be the indexed block, the only one whose state "
        "the database holds (default: the indexed block)",
    )
    add_json(verify, "print the report as one JSON object instead")
    verify.set_defaults(handler=cmd_verify)
