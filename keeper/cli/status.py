"""`keeper status`: one chain's state on one screen, from the database (and, with --config, a
probe of each RPC provider)."""

from __future__ import annotations

import argparse
from typing import Any

from keeper.cli.common import (
    DATABASE_URL_ENV,
    Formatter,
    add_database_target,
    add_json,
    chain_id,
    database_url,
)

PROBE_WAIT = 5.0  # seconds `keeper status --config` waits for the RPC providers


def cmd_status(args: argparse.Namespace) -> int:
    """Print one chain's status from the database (read-only: safe next to a running keeper),
    and with --config each RPC provider as probed now."""
    import json

    import anyio

    chain_id: int | None = args.chain_id
    if args.config is not None:
        from keeper.config_load import load_config

        config = load_config(args.config)
        dsn = config.database.url.get_secret_value()
        if chain_id is None:
            chain_id = config.chain.chain_id or config.deployment().chain_id
    else:
        dsn = database_url(args)

    async def run() -> dict[str, Any]:
        from keeper import db
        from keeper.service.status import collect_status

        conn = await db.connect(dsn)
        try:
            status = await collect_status(conn, chain_id)
        finally:
            await conn.close()
        if args.config is not None:
            # The providers as this command finds them now (the daemon's own view, with its
            # selection and error counts, is on its health port's /status).
            client = config.chain.client()
            try:
                # A provider that does not answer is shown as such, after at most PROBE_WAIT.
                with anyio.move_on_after(PROBE_WAIT):
                    await client.probe_once()
                status["providers"] = client.snapshot()
            finally:
                await client.close()
        return status

    status = anyio.run(run)
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        from keeper.service.status import render_status

        print(render_status(status), end="")
    return 0


def add_parser(sub: Any) -> None:
    """`keeper status [--config FILE | --database-url DSN] [--chain-id N] [--json]`."""
    status = sub.add_parser(
        "status",
        formatter_class=Formatter,
        help="one screen: blocks, lag, pending work, signers, last reorg, last error",
        description=(
            "Print one chain's state on one screen, from the database alone: the leader,\n"
            "the chain's head, indexed and finalized blocks and the lag (as the indexer last\n"
            "saw them), pending work per kind (streams due, escrows refundable, usage rows,\n"
            "intents on their way), each signer's balance, next nonce and work in flight,\n"
            "the last 24 hours' settlements, usage reports and refunds, the last reorg and\n"
            "the last error. It only reads, in one read-only snapshot of the operator views,\n"
            "so it is safe while `keeper run` runs, and works as the read-only role\n"
            "keeper_reader. The database is the one of --config FILE, else --database-url,\n"
            f"else ${DATABASE_URL_ENV}."
        ),
    )
    add_database_target(
        status,
        "the keeper's TOML configuration: its database, and its chain (chain.chain_id, "
        "else the deployment file's) unless --chain-id is given",
    )
    status.add_argument(
        "--chain-id",
        type=chain_id,
        metavar="N",
        help="the chain to show; default: the configuration's, else the database's only "
        "indexed chain (an error when it holds several)",
    )
    add_json(status, "print the status as one JSON object instead")
    status.set_defaults(handler=cmd_status)
