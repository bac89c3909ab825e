"""Follow the contracts' logs into Postgres: backfill in wide ranges, then the head block by block.

Two zones. At or below the finalized block (the node's `finalized` tag, else head minus a
configured depth) nothing can change: logs are read in wide `eth_getLogs` ranges that adapt to
the provider's limits and are written with COPY, the next range prefetched while the current one
is written. Above it, blocks are taken in order and each one's parent hash is checked against the
block stored before it; a mismatch (or the stored head no longer being canonical) walks back to
the common ancestor, re-checks, and rolls the database back in one transaction. A reorg below
the finalized block is fatal: the process stops with `EXIT_FATAL_REORG` rather than guess.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import asyncpg
import structlog
from anyio.abc import TaskStatus
from prometheus_client import Counter

from keeper import metrics
from keeper.chain.heads import HeadWatcher
from keeper.chain.rpc import (
    BlockHeader,
    ChainClient,
    RangeTooLarge,
    RpcResponseError,
    effective_finalized,
)
from keeper.config import IngestConfig
from keeper.errors import PermanentError, unwrap_group
from keeper.ingest.checked_logs import LogChecker
from keeper.ingest.events import DecodedBatch, Decoder
from keeper.ingest.ranges import GC_COLLECT_EVERY, Range, RangeReader, gc_paused, shrunk
from keeper.ingest.reorgs import EXIT_FATAL_REORG, FatalReorg, handle_reorg
from keeper.ingest.store import Cursor, CursorMoved, Store
from keeper.loops import OUTAGES, LoopGuard

__all__ = [
    "EXIT_FATAL_REORG",
    "BackfillProgress",
    "ChainMismatch",
    "FatalReorg",
    "Indexer",
]

log = structlog.get_logger(__name__)

BACKFILL_RUNS = Counter(
    "keeper_backfill_runs_total",
    "Backfill runs of the indexer: one at start and one after each fall behind the finalized "
    "block; a run that continues the previous one (a finalized block close to the head) is "
    "counted here and logged at debug.",
    registry=metrics.REGISTRY,
)
DECODE_PART_LOGS = 20_000  # logs decoded at a time: the server copies one part while the next


class ChainMismatch(PermanentError):
    """The RPC serves another chain than the one configured."""


@dataclass(frozen=True)
class BackfillProgress:
    """Where a backfill is, after each range written (for a caller's progress display)."""

    first: int  # the first block of the backfill
    target: int  # its last block
    block: int  # the last block written
    events: int  # events written so far
    elapsed: float  # seconds since the backfill started

    @property
    def total_blocks(self) -> int:
        """Blocks in the whole backfill."""
        return self.target - self.first + 1

    @property
    def blocks_done(self) -> int:
        """Blocks written so far."""
        return self.block - self.first + 1


class Indexer:
    """Keeps one chain's contract events and projections in Postgres up to date."""

    def __init__(
        self,
        client: ChainClient,
        pool: asyncpg.Pool,
        *,
        chain_id: int,
        addresses: dict[str, str],
        start_block: int,
        settings: IngestConfig | None = None,
        ws_url: str | None = None,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        self.client = client
        self.ws_url = ws_url
        self.on_error = on_error  # told each failed poll's one-line text (for /status)
        self._wake = anyio.Event()
        self.pool = pool
        self.chain_id = chain_id
        self.addresses = [a for a in addresses.values()]
        self.start_block = start_block
        self.settings = settings or IngestConfig()
        self.decoder = Decoder(chain_id, addresses)
        self.store = Store(chain_id, self.decoder, partition_blocks=self.settings.partition_blocks)
        self.follow_step = self.settings.max_follow_step
        self.checker = LogChecker(
            client,
            self.addresses,
            [*self.decoder.typed, *self.decoder.raw],
            check_blooms=self.settings.check_log_blooms,
            recheck_delay=self.settings.recheck_delay,
            log=log.bind(chain_id=chain_id),
        )
        self.log = log.bind(chain_id=chain_id)
        self._backfilled_to = -2  # the last block of the latest backfill run
        self.ranges = RangeReader(
            client,
            self.addresses,
            initial=self.settings.initial_range,
            minimum=self.settings.min_range,
            maximum=self.settings.max_range,
            target_logs=self.settings.target_logs,
            logger=self.log,
        )

    # ------------------------------------------------------------------ entry points

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Check the chain, then poll forever (started with `await tg.start(indexer.run)`)."""
        actual = await self.client.chain_id()
        if actual != self.chain_id:
            raise ChainMismatch(
                f"the RPC serves chain {actual}, the configuration says {self.chain_id}",
                help="point chain.rpc_url at the right network or fix chain.chain_id",
            )
        with unwrap_group():
            async with anyio.create_task_group() as tg:
                if self.ws_url:
                    await tg.start(HeadWatcher(self.ws_url, self._wake_up).run)
                task_status.started()
                await self._poll_forever()

    def _wake_up(self) -> None:
        self._wake.set()

    async def _idle(self, seconds: float) -> None:
        """Sleep up to `seconds`, or until a newHeads notification arrives."""
        with anyio.move_on_after(seconds):
            await self._wake.wait()
        self._wake = anyio.Event()

    async def _poll_forever(self) -> None:
        # Outages are reported and waited out, any other error too (the guard logs it with its
        # traceback once); the poll resumes from the cursor. Only a reorg below the finalized
        # block stops the indexer.
        guard = LoopGuard(
            "sync",
            self.settings.poll_interval,
            outages=(*OUTAGES, CursorMoved),
            on_error=self.on_error,
            logger=self.log,
        )
        while True:
            try:
                advanced = await self.sync_once()
            except FatalReorg:
                raise
            except Exception as exc:  # contained: see keeper.loops
                await anyio.sleep(guard.failed(exc))
                continue
            guard.succeeded()
            if advanced == 0:
                await self._idle(self.settings.poll_interval)

    async def sync_once(self) -> int:
        """One poll: catch up as far as the node allows; return the number of blocks advanced."""
        async with self.pool.acquire() as conn:
            cursor = await self.store.cursor(conn, self.start_block)
        head, finalized, at_cursor = await self._observe(cursor)
        async with self.pool.acquire() as conn:
            await self.store.observe_head(conn, head, finalized)
        metrics.HEAD_BLOCK.set(head.number)
        metrics.FINALIZED_BLOCK.set(finalized)
        if cursor.indexed_timestamp is not None:
            metrics.LAG_SECONDS.set(max(0, head.timestamp - cursor.indexed_timestamp))

        # Is what we indexed last still canonical? (The node may have reorged, even while
        # we were down, or been rolled back below it.)
        if cursor.indexed_hash is not None and (
            at_cursor is None or at_cursor.hash != cursor.indexed_hash
        ):
            return 1 if await self._reorg(cursor) else 0

        advanced = 0
        if cursor.indexed_block < finalized:
            advanced += await self.backfill(cursor, finalized)
            async with self.pool.acquire() as conn:
                cursor = await self.store.cursor(conn, self.start_block)
        if cursor.indexed_block < head.number:
            advanced += await self._follow(cursor, head)
        if advanced:
            async with self.pool.acquire() as conn:
                await self.store.prune_blocks(conn, finalized - self.settings.keep_blocks)
        return advanced

    # ------------------------------------------------------------------ backfill

    async def backfill(
        self,
        cursor: Cursor,
        target: int,
        *,
        progress: Callable[[BackfillProgress], None] | None = None,
        mark_done: bool = True,
    ) -> int:
        """Index (cursor, target] in wide ranges; target must be final. Returns blocks done.

        `progress` is called after each range is written. With `mark_done` (the default),
        reaching `target` marks the backfill done (the planners wait for that): a caller that
        stops short of the finalized block passes False.
        """
        first = cursor.indexed_block + 1
        if first > target:
            return 0
        total_blocks = target - first + 1
        done_blocks = 0
        done_events = 0
        started = last_report = time.monotonic()
        # A run that starts where the previous one ended is the same state going on (a node
        # whose finalized block follows its head): counted, and logged at debug only.
        say = self.log.debug if first == self._backfilled_to + 1 else self.log.info
        self._backfilled_to = target
        BACKFILL_RUNS.inc()
        say("backfill_started", from_block=first, to_block=target)
        send, receive = anyio.create_memory_object_stream[Range](2)
        collected = started

        async def produce() -> None:
            async with send:
                start = first
                while start <= target:
                    fetched = await self.ranges.fetch(start, target)
                    try:
                        await send.send(fetched)
                    except anyio.BrokenResourceError:
                        return  # the writer stopped (its own error says why): nothing to add
                    start = fetched.end.number + 1

        with gc_paused(), unwrap_group():
            async with anyio.create_task_group() as tg:
                tg.start_soon(produce)
                async with receive:
                    async for fetched in receive:
                        done = fetched.end.number >= target
                        async with self.pool.acquire() as conn:
                            done_events += await self.store.write_range(
                                conn,
                                self._decoded_parts(fetched),
                                fetched.start,
                                fetched.end,
                                backfill_done=done and mark_done,
                            )
                        done_blocks += fetched.end.number - fetched.start + 1
                        now = time.monotonic()
                        if progress is not None:
                            progress(
                                BackfillProgress(
                                    first, target, fetched.end.number, done_events, now - started
                                )
                            )
                        if now - collected >= GC_COLLECT_EVERY:
                            gc.collect()
                            collected = now
                        if now - last_report >= self.settings.progress_interval or done:
                            elapsed = max(now - started, 1e-9)
                            rate = done_blocks / elapsed
                            say(
                                "backfill_progress",
                                block=fetched.end.number,
                                blocks_per_s=round(rate, 1),
                                events_per_s=round(done_events / elapsed, 1),
                                events=done_events,
                                range=self.ranges.range,
                                eta_s=round((total_blocks - done_blocks) / rate, 1)
                                if rate
                                else None,
                            )
                            last_report = now
        async with self.pool.acquire() as conn:
            await self.store.prune_blocks(conn, target - self.settings.keep_blocks)
        return done_blocks

    async def read_range(self, start: int, target: int) -> tuple[int, DecodedBatch]:
        """Read and decode the widest range from `start` (up to `target`) the provider accepts,
        adapting the range as backfill does, without writing anything; return the range's last
        block and its rows (for `keeper backfill`'s check of blocks already indexed)."""
        fetched = await self.ranges.fetch(start, target)
        return fetched.end.number, self.decoder.decode(fetched.logs, fetched.timestamps)

    def _decoded_parts(self, fetched: Range) -> Iterator[DecodedBatch]:
        """The range's logs decoded DECODE_PART_LOGS at a time, each when it is asked for.

        Consumes `fetched.logs`: each part's log dicts are let go once decoded.
        """
        logs = fetched.logs
        while logs:
            part = logs[:DECODE_PART_LOGS]
            del logs[:DECODE_PART_LOGS]
            yield self.decoder.decode(part, fetched.timestamps)

    # ------------------------------------------------------------------ follow

    async def _observe(self, cursor: Cursor) -> tuple[BlockHeader, int, BlockHeader | None]:
        """Head, finalized block number and the node's block at the cursor, in one batch."""
        calls: list[tuple[str, Sequence[Any]]] = [
            ("eth_getBlockByNumber", ["latest", False]),
            ("eth_getBlockByNumber", ["finalized", False]),
        ]
        if cursor.indexed_hash is not None:
            calls.append(("eth_getBlockByNumber", [hex(cursor.indexed_block), False]))
        try:
            results = await self.client.batch(calls)
        except RpcResponseError:
            # Some nodes refuse the `finalized` tag with an error: ask separately.
            head = await self.client.head()
            finalized = await self.client.finalized(head, self.settings.finality_depth)
            at_cursor = (
                await self.client.header(cursor.indexed_block)
                if cursor.indexed_hash is not None
                else None
            )
            return head, finalized, at_cursor
        head = BlockHeader.from_rpc(results[0])
        tag = int(results[1]["number"], 16) if results[1] else None
        depth = self.settings.finality_depth
        finalized = self.client.cap_finalized(effective_finalized(tag, head.number, depth), depth)
        at_cursor = None
        if len(results) > 2 and results[2]:
            at_cursor = BlockHeader.from_rpc(results[2])
        return head, finalized, at_cursor

    async def _follow(self, cursor: Cursor, head: BlockHeader) -> int:
        """Take the blocks after the cursor, up to the head, checking the parent-hash chain."""
        first = cursor.indexed_block + 1
        last = min(head.number, first + self.follow_step - 1)
        headers = await self.client.headers(list(range(first, last + 1)))
        chain: list[BlockHeader] = []
        parent = cursor.indexed_hash
        for header in headers:
            if header is None:
                break  # the node's head moved back while we read: take what is consistent
            if parent is not None and header.parent_hash != parent:
                if not chain:
                    # The block after our cursor does not build on it: a reorg.
                    return 1 if await self._reorg(cursor) else 0
                break
            chain.append(header)
            parent = header.hash
        if not chain:
            return 0
        while True:
            try:
                logs = await self.client.get_logs(self.addresses, chain[0].number, chain[-1].number)
                break
            except RangeTooLarge as exc:
                # The provider's limit is below the unfinalized window: take fewer blocks.
                self.follow_step = shrunk(
                    chain[0].number, chain[-1].number, exc, self.settings.min_range
                )
                self.log.info("follow_step_shrunk", refused=len(chain), step=self.follow_step)
                chain = chain[: self.follow_step]
        checked = await self.checker.checked(chain, logs)
        if checked is None:
            return 0  # the chain moved, or no answer could be believed: read again next poll
        chain, logs = checked
        timestamps = {h.number: h.timestamp for h in chain}
        batch: DecodedBatch = self.decoder.decode(logs, timestamps)
        async with self.pool.acquire() as conn:
            await self.store.write_range(
                conn, batch, chain[0].number, chain[-1], blocks=chain[:-1], backfill_done=True
            )
        self.log.debug(
            "blocks_indexed",
            from_block=chain[0].number,
            to_block=chain[-1].number,
            events=batch.count,
        )
        return len(chain)

    async def _reorg(self, cursor: Cursor) -> bool:
        """Roll back to the common ancestor if the reorg is confirmed (True if done)."""
        return await handle_reorg(
            self.client, self.pool, self.store, cursor, self.settings.recheck_delay, self.log
        )
