"""Reorgs of the unfinalized blocks: find the newest stored block the node still has, make
sure the answer holds, and roll the index back to it in one transaction.

A reorg below the finalized block is fatal: the process stops with `EXIT_FATAL_REORG` rather
than guess.
"""

from __future__ import annotations

from typing import Any

import anyio
import asyncpg

from keeper import metrics
from keeper.chain.rpc import BlockHeader, ChainClient, RpcError
from keeper.errors import KeeperError
from keeper.ingest.store import Cursor, Store

EXIT_FATAL_REORG = 3


class FatalReorg(KeeperError):
    """The chain reorganised below the finalized block: the index cannot be trusted."""

    exit_code = EXIT_FATAL_REORG


async def handle_reorg(
    client: ChainClient,
    pool: asyncpg.Pool,
    store: Store,
    cursor: Cursor,
    recheck_delay: float,
    log: Any,
) -> bool:
    """Walk back to the common ancestor, re-check, and roll back to it (True if done)."""
    ancestor = await common_ancestor(client, pool, store, cursor)
    if ancestor is None:
        raise FatalReorg(
            f"chain {store.chain_id}: no stored block below {cursor.indexed_block} is "
            "canonical any more",
            help="the chain reorganised below the finalized block; re-index from scratch "
            "after checking the RPC node",
        )
    # Never trust one lagging answer: ask again after a pause.
    await anyio.sleep(recheck_delay)
    again = await common_ancestor(client, pool, store, cursor)
    if again is None or again.number != ancestor.number or again.hash != ancestor.hash:
        log.warning("reorg_unconfirmed", first=ancestor.number)
        return False
    if ancestor.number == cursor.indexed_block and ancestor.hash == cursor.indexed_hash:
        # The node only answered from behind for a moment: our head is still canonical.
        log.info("node_lagged", block=cursor.indexed_block)
        return False
    if client.several and not await confirmed_elsewhere(client, pool, store, cursor, ancestor, log):
        return False
    finalized = cursor.finalized_block
    if finalized is not None and ancestor.number < min(finalized, cursor.indexed_block):
        raise FatalReorg(
            f"chain {store.chain_id}: reorg back to block {ancestor.number}, below the "
            f"finalized block {finalized}",
            help="the node rewrote finalized history; the index stops rather than guess. "
            "Check the RPC node, then re-index (drop the chain's rows) if it is right",
        )
    async with pool.acquire() as conn:
        old_head = await store.stored_block(conn, cursor.indexed_block)
        old = old_head or BlockHeader(
            cursor.indexed_block, cursor.indexed_hash or "0x" + "00" * 32, "0x" + "00" * 32, 0
        )
        current = await client.head()
        removed = await store.rollback_to(conn, ancestor, old, current)
    depth = cursor.indexed_block - ancestor.number
    metrics.REORGS.inc()
    metrics.REORG_DEPTH.observe(depth)
    log.warning(
        "reorg_handled",
        depth=depth,
        ancestor=ancestor.number,
        old_head=cursor.indexed_hash,
        new_head=current.hash,
        events_removed=removed,
    )
    return True


async def confirmed_elsewhere(
    client: ChainClient,
    pool: asyncpg.Pool,
    store: Store,
    cursor: Cursor,
    ancestor: BlockHeader,
    log: Any,
) -> bool:
    """Whether another provider than the one that showed the reorg finds the same common
    ancestor: no provider alone can make the index roll back. Until one does (a provider that
    lags has not seen the new chain yet; one that failed cannot say), the reorg waits for the
    next poll, and the index keeps its blocks."""
    seen = []
    for label, other in client.others():
        try:
            theirs = await common_ancestor(other, pool, store, cursor)
        except RpcError as exc:
            seen.append(f"{label}: {type(exc).__name__}")
            continue
        if theirs is not None and (theirs.number, theirs.hash) == (ancestor.number, ancestor.hash):
            log.info("reorg_confirmed", ancestor=ancestor.number, by=label)
            return True
        seen.append(f"{label}: ancestor {theirs.number if theirs else None}")
    log.warning(
        "reorg_unconfirmed",
        first=ancestor.number,
        selected=client.pool.current.label,
        others="; ".join(seen) or "no other provider",
        help="one provider shows a chain the others do not: the index waits for a second one",
    )
    return False


async def common_ancestor(
    client: ChainClient, pool: asyncpg.Pool, store: Store, cursor: Cursor
) -> BlockHeader | None:
    """The newest stored block the node still has at the same height with the same hash."""
    async with pool.acquire() as conn:
        stored = await store.stored_blocks(conn, cursor.indexed_block)
    for i in range(0, len(stored), 64):
        group = stored[i : i + 64]
        node = await client.headers([b.number for b in group])
        for mine, theirs in zip(group, node, strict=True):
            if theirs is not None and theirs.hash == mine.hash:
                return mine
    # Nothing stored matches. If everything indexed is still unfinalized, the whole index is
    # on the orphaned branch: start again from just before the deployment block.
    if cursor.finalized_block is None or cursor.finalized_block < cursor.start_block:
        if cursor.start_block == 0:
            return BlockHeader(-1, "0x" + "00" * 32, "0x" + "00" * 32, 0)
        return await client.header(cursor.start_block - 1)
    return None
