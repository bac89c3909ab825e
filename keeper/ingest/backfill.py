"""`keeper backfill`: index a range of finalized blocks into the database, then exit.

The index must stay contiguous: events are written from the cursor + 1 (the deployment block
on an empty database) and a start above that is refused, as it would leave a gap. The end is
at most the node's finalized block: blocks above it may still be reorganised, and belong to
`keeper run`'s follow loop, which checks their parent hashes. A start below the cursor + 1
re-reads the blocks already indexed and compares the number of events of each kind with the
database, writing nothing for them; on a difference nothing more is written either.

The writing is the indexer's own backfill (`Indexer.backfill`: adaptive `eth_getLogs`
ranges, COPY, one transaction per range with the cursor), so it is crash-safe in the same
way, and safe next to a running keeper: each write claims the cursor, and a write that finds
it moved fails as `CursorMoved`, reported here as `BackfillError`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import asyncpg

from keeper import db
from keeper.chain import preflight
from keeper.chain.deployment import Deployment
from keeper.config import KeeperConfig
from keeper.db.queries import load_queries
from keeper.errors import KeeperError
from keeper.ingest.indexer import BackfillProgress, Indexer
from keeper.ingest.store import CursorMoved
from keeper.progress import ProgressLine


class BackfillError(KeeperError):
    """The backfill cannot run as asked."""


@dataclass
class BackfillResult:
    """What a backfill did: the blocks it checked and wrote, and the differences it found."""

    chain_id: int
    finalized: int
    indexed_before: int
    checked: tuple[int, int] | None = None
    # event table -> (events in the database, logs on the chain), only where they differ
    differences: dict[str, tuple[int, int]] = field(default_factory=dict)
    checked_events: int = 0
    written: tuple[int, int] | None = None
    events: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True unless the check found a difference."""
        return not self.differences


async def run_backfill(
    config: KeeperConfig,
    deployment: Deployment,
    *,
    start: int | None,
    end: int | None,
    progress: ProgressLine | None = None,
) -> BackfillResult:
    """Check and/or index blocks [start, end] (defaults: cursor + 1, the finalized block)."""
    client = config.chain.client()
    try:
        await preflight.check_chain(config, deployment, client)
        pool = await db.create_pool(config.database.url.get_secret_value(), min_size=1, max_size=2)
        try:
            indexer = Indexer(
                client,
                pool,
                chain_id=deployment.chain_id,
                addresses={
                    "StreamManager": deployment.stream_manager,
                    "EscrowVault": deployment.escrow_vault,
                },
                start_block=deployment.deployment_block,
                settings=config.ingest,
            )
            return await backfill_range(indexer, start, end, progress)
        finally:
            await pool.close()
    finally:
        await client.close()


async def backfill_range(
    indexer: Indexer, start: int | None, end: int | None, progress: ProgressLine | None
) -> BackfillResult:
    """`run_backfill` with an indexer already made (its client and pool are the caller's)."""
    try:
        async with indexer.pool.acquire() as conn:
            cursor = await indexer.store.cursor(conn, indexer.start_block)
    except asyncpg.UndefinedTableError:
        raise BackfillError(
            "the database has no keeper schema",
            help="run `keeper migrate --config FILE` first",
        ) from None
    head = await indexer.client.head()
    finalized = await indexer.client.finalized(head, indexer.settings.finality_depth)
    following = cursor.indexed_block + 1
    first = following if start is None else start
    last = finalized if end is None else end
    result = BackfillResult(indexer.chain_id, finalized, cursor.indexed_block)
    if start is None and end is None and finalized < following:
        return result  # nothing final left to index
    _check_bounds(first, last, following, finalized, cursor.start_block)
    started = time.monotonic()
    if first < following and first <= last:
        result.checked = (first, min(following - 1, last))
        await _compare(indexer, *result.checked, result, progress)
        if result.differences:
            result.seconds = time.monotonic() - started
            return result
    if last >= following:
        await _check_cursor_canonical(indexer, cursor.indexed_block, cursor.indexed_hash)
        async with indexer.pool.acquire() as conn:
            # What the node reports, for the views' lag (as the daemon records it each poll).
            await indexer.store.observe_head(conn, head, finalized)

        def written(p: BackfillProgress) -> None:
            result.events = p.events
            if progress is not None:
                show_progress(progress, "indexing", p)

        try:
            # Backfill done (the planners' signal) only when the index reached the finalized
            # block, not when an operator stopped it short of it.
            await indexer.backfill(cursor, last, progress=written, mark_done=last == finalized)
        except CursorMoved as exc:
            raise BackfillError(
                f"chain {indexer.chain_id}: another keeper wrote to the index meanwhile (the "
                f"cursor moved away from block {cursor.indexed_block}); nothing of this "
                "backfill's current range was written",
                help="a keeper running on this chain and database keeps the index up to date "
                "itself: let it, or stop it before backfilling",
            ) from exc
        result.written = (following, last)
    result.seconds = time.monotonic() - started
    return result


def _check_bounds(first: int, last: int, following: int, finalized: int, start: int) -> None:
    """Refuse a range that would leave a gap, reach unfinalized blocks or precede the
    deployment."""
    if first > following:
        gap = f"block {following}" if first == following + 1 else f"blocks {following}..{first - 1}"
        raise BackfillError(
            f"--from {first} would leave {gap} out of the index, "
            f"which must stay contiguous (it ends at block {following - 1})",
            help=f"omit --from (it starts at {following}) or pass a block at or below it",
        )
    if first < start:
        raise BackfillError(
            f"--from {first} is below the deployment block {start}: the contracts emitted "
            "nothing before it",
            help=f"pass --from {start} or higher",
        )
    if last > finalized:
        raise BackfillError(
            f"--to {last} is above the finalized block {finalized}: blocks above it may still "
            "be reorganised and are indexed by `keeper run`, which checks their parent hashes",
            help=f"pass --to {finalized} or lower, or omit --to",
        )
    if last < first:
        raise BackfillError(f"--to {last} is below --from {first}")


async def _check_cursor_canonical(indexer: Indexer, block: int, block_hash: str | None) -> None:
    """Writing after the cursor is only right if the indexed head is still on the chain."""
    if block_hash is None:
        return
    header = await indexer.client.header(block)
    if header is None or header.hash != block_hash:
        raise BackfillError(
            f"chain {indexer.chain_id}: the last indexed block {block} ({block_hash}) is no "
            "longer on the node's chain: it was reorganised away after the index took it",
            help="start `keeper run`, which rolls the index back to the common ancestor; "
            "backfill after that",
        )


async def _compare(
    indexer: Indexer, first: int, last: int, result: BackfillResult, progress: ProgressLine | None
) -> None:
    """Count the node's logs per event table in [first, last] and compare with the database."""
    on_chain: dict[str, int] = dict.fromkeys(indexer.decoder.tables, 0)
    started = time.monotonic()
    block = first
    while block <= last:
        end, batch = await indexer.read_range(block, last)
        for table, decoded in batch.rows.items():
            on_chain[table] = on_chain.get(table, 0) + len(decoded)
        result.checked_events += batch.count
        block = end + 1
        if progress is not None:
            show_progress(
                progress,
                "checking",
                BackfillProgress(
                    first, last, end, result.checked_events, time.monotonic() - started
                ),
            )
    async with indexer.pool.acquire() as conn:
        rows = await conn.fetch(
            load_queries("backfill.sql")["event_counts"], indexer.chain_id, first, last
        )
    stored = {str(r["event_table"]): int(r["events"]) for r in rows}
    for table in sorted(set(on_chain) | set(stored)):
        mine, theirs = stored.get(table, 0), on_chain.get(table, 0)
        if mine != theirs:
            result.differences[table] = (mine, theirs)


def show_progress(line: ProgressLine, phase: str, p: BackfillProgress) -> None:
    """Draw the backfill's progress on `line` if a frame is due; the last block's always is,
    and ends the line."""
    final = p.block >= p.target
    if line.due(final=final):
        line.draw(format_progress(phase, p), final=final)


def format_progress(phase: str, p: BackfillProgress) -> str:
    """`indexing 120,000/400,000 blocks (30.0%)  9,800 blocks/s  51,234 events  ETA 0:00:29`"""
    done, total = p.blocks_done, p.total_blocks
    rate = done / p.elapsed if p.elapsed > 0 else 0.0
    eta = "-"
    if rate > 0:
        left = int((total - done) / rate)
        eta = f"{left // 3600}:{left % 3600 // 60:02d}:{left % 60:02d}"
    percent = 100.0 * done / total if total else 100.0
    return (
        f"{phase} {done:,}/{total:,} blocks ({percent:.1f}%)  {rate:,.0f} blocks/s  "
        f"{p.events:,} events  ETA {eta}"
    )
