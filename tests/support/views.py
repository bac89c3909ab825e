"""Rows written straight into the projections for the view tests: the parties, the chain and its
clock, the ingest cursor and the fee."""

from __future__ import annotations

import asyncpg

CHAIN = 31337
OTHER = bytes.fromhex("0f" * 20)
PAYER = bytes.fromhex("11" * 20)
PAYEE = bytes.fromhex("ab" * 19 + "cd")
T0 = 1_700_000_000  # a realistic chain timestamp (2023-11-14 22:13:20 UTC)


async def put_cursor(
    db: asyncpg.Connection,
    *,
    indexed_block: int,
    indexed_timestamp: int | None,
    finalized_block: int | None = None,
    head_block: int | None = None,
    head_timestamp: int | None = None,
    chain_id: int = CHAIN,
) -> None:
    await db.execute(
        """
        INSERT INTO ingest_cursor (chain_id, start_block, indexed_block, indexed_hash,
                                   indexed_timestamp, head_block, head_timestamp,
                                   finalized_block)
        VALUES ($1, 0, $2, $3, $4, $5, $6, $7)
        ON CONFLICT (chain_id) DO UPDATE
        SET indexed_block = EXCLUDED.indexed_block, indexed_hash = EXCLUDED.indexed_hash,
            indexed_timestamp = EXCLUDED.indexed_timestamp, head_block = EXCLUDED.head_block,
            head_timestamp = EXCLUDED.head_timestamp, finalized_block = EXCLUDED.finalized_block
        """,
        chain_id,
        indexed_block,
        indexed_block.to_bytes(32, "big") if indexed_block >= 0 else None,
        indexed_timestamp,
        head_block,
        head_timestamp,
        finalized_block,
    )


async def put_fee(db: asyncpg.Connection, fee_bps: int | None, chain_id: int = CHAIN) -> None:
    await db.execute(
        """
        INSERT INTO contract_params (chain_id, fee_bps, fee_recipient, updated_block)
        VALUES ($1, $2, $3, 1)
        ON CONFLICT (chain_id) DO UPDATE SET fee_bps = EXCLUDED.fee_bps
        """,
        chain_id,
        fee_bps,
        OTHER,
    )
