"""`keeper plan`: what the next pass would plan, without planning it, with each batch's reasons
and the gas the node estimates for it."""

from __future__ import annotations

from typing import Any

import asyncpg

from keeper.chain.reverts import revert_reason
from keeper.chain.rpc import ChainClient, RpcResponseError
from keeper.db import Conn
from keeper.errors import KeeperError
from keeper.plan.planner import Batch, Planner


def describe(batch: Batch) -> dict[str, Any]:
    """A JSON-able view of a batch (for `keeper plan --json` and logs)."""
    reasons: dict[str, int] = {}
    for reason in batch.reasons.values():
        reasons[reason] = reasons.get(reason, 0) + 1
    return {
        "kind": batch.kind,
        "key": batch.key,
        "target": batch.target,
        "urgent": batch.urgent,
        "items": batch.items,
        "reasons": {str(i): r for i, r in batch.reasons.items()},
        "reason_counts": reasons,
        "amount": str(batch.amount),
    }


async def dry_run(
    planner: Planner,
    conn: Conn,
    client: ChainClient,
    sender: str,
    usage_sender: str | None = None,
) -> dict[str, Any]:
    """What the next pass would plan, without planning it: the batches with each item's reason
    and the gas `eth_estimateGas` gives for each from `sender` (settle and refund calls are
    permissionless; usage batches are simulated from `usage_sender`, an account with
    ORACLE_ROLE, when given). The configured thresholds are applied and the usage inbox is
    validated in a transaction that is rolled back, so the database is left exactly as it
    was."""
    head = await client.head()
    tr = conn.transaction()
    await tr.start()
    try:
        await planner.store_settings(conn)
        report = await planner.plan_pass(conn, base_fee=head.base_fee, dry_run=True)
    except asyncpg.UndefinedTableError as exc:
        raise KeeperError(
            f"the database has no keeper schema ({exc})", help="run `keeper migrate` first"
        ) from None
    finally:
        await tr.rollback()
    batches = []
    for batch in report.planned:
        shown = describe(batch)
        origin = usage_sender if batch.kind == "usage" and usage_sender else sender
        call = {"from": origin, "to": batch.target, "data": "0x" + batch.calldata.hex()}
        try:
            shown["simulated_gas"] = int(await client.request("eth_estimateGas", [call]), 16)
        except RpcResponseError as exc:
            shown["simulated_gas"] = None
            shown["simulation_error"] = (
                revert_reason(exc.data) if exc.data is not None else exc.message
            )
        batches.append(shown)
    return {
        "chain_id": planner.chain_id,
        "indexed_block": report.block,
        "head_block": head.number,
        "base_fee": head.base_fee,
        "due": report.due,
        "held_by_base_fee": report.held_by_base_fee,
        "batches": batches,
    }
