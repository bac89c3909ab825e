"""`keeper plan`: a dry run of the next planning pass."""

from __future__ import annotations

import argparse
from typing import Any

from keeper.cli.common import CONFIG_HELP, Formatter, add_config, add_json


def cmd_plan(args: argparse.Namespace) -> int:
    """Print what the next planning pass would send, without sending or planning anything."""
    import json

    import anyio

    from keeper.config_load import load_config

    config = load_config(args.config)
    result = anyio.run(_dry_plan, config)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    base_fee = result["base_fee"]
    print(
        f"chain {result['chain_id']}: indexed block {result['indexed_block']}, head "
        f"{result['head_block']}, base fee {base_fee if base_fee is not None else '-'} wei"
    )
    due = result["due"]
    print(
        f"due: {due.get('settle', 0)} streams to settle, {due.get('refund', 0)} escrows to "
        f"refund, {due.get('usage', 0)} usage reports to record"
    )
    if result["held_by_base_fee"]:
        print(f"held back by the base-fee ceiling: {result['held_by_base_fee']} items")
    if not result["batches"]:
        print("nothing to send")
    for b in result["batches"]:
        reasons = ", ".join(f"{r}={n}" for r, n in sorted(b["reason_counts"].items()))
        gas = b["simulated_gas"]
        shown = f"gas {gas:,}" if gas is not None else f"reverts: {b['simulation_error']}"
        urgent = "urgent " if b["urgent"] else ""
        print(f"{b['kind']:<7} {urgent}{len(b['items'])} items  {shown}  ({reasons})  {b['key']}")
        if b["kind"] == "usage":
            print(f"        stream:seq: {' '.join(f'{i}:{q}' for i, _, q, *_ in b['items'])}")
        else:
            print(f"        ids: {' '.join(map(str, b['items']))}")
    return 0


async def _dry_plan(config: Any) -> dict[str, Any]:
    from keeper import db
    from keeper.plan.dry_run import dry_run
    from keeper.plan.planner import Planner

    deployment = config.deployment()
    planner = Planner(
        deployment.chain_id,
        stream_manager=deployment.stream_manager,
        escrow_vault=deployment.escrow_vault,
        settings=config.plan,
    )
    conn = await db.connect(config.database.url.get_secret_value())
    client = config.chain.client()
    try:
        return await dry_run(planner, conn, client, deployment.deployer, deployment.oracle)
    finally:
        await client.close()
        await conn.close()


def add_parser(sub: Any) -> None:
    """`keeper plan --config FILE [--json]`."""
    plan = sub.add_parser(
        "plan",
        formatter_class=Formatter,
        help="dry run: the batches the next planning pass would send",
        description=(
            "Read the indexed state and print the batches the next planning pass would send:\n"
            "each item with the reason it is due (depleting, min_amount, max_interval,\n"
            "expired) and the gas eth_estimateGas gives for each batch. Nothing is planned,\n"
            "signed or sent, and the database is left as it was."
        ),
    )
    add_config(plan, CONFIG_HELP)
    add_json(plan)
    plan.set_defaults(handler=cmd_plan)
