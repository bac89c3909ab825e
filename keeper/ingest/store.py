"""The indexer's writes: events, projections, blocks and the cursor, one transaction each.

`write_range` stores what a block range emitted and moves the cursor in the same transaction,
so a crash at any moment leaves the database at a range boundary and a restart continues from
there without writing anything twice. `rollback_to` undoes everything after a common ancestor
(events, blocks, projections, ledger) in one transaction and records the reorg.

The event tables are partitioned by block range (sql/schema.sql, section 0018): before a write,
the partitions of its blocks are created in a short transaction of their own, once per
`partition_blocks` blocks (the store remembers which blocks have them).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import anyio
import asyncpg
from anyio.streams.memory import MemoryObjectSendStream

from keeper import metrics
from keeper.chain.rpc import BlockHeader
from keeper.db import Conn
from keeper.db.queries import Queries, load_queries
from keeper.errors import KeeperError, unwrap_group
from keeper.ingest.catalog import RAW_TABLE, rollback_query
from keeper.ingest.events import DecodedBatch, Decoder
from keeper.ingest.projections import Projected, StreamPatch, Touched, fold

COPY_QUEUE = 2  # decoded parts waiting for their COPY
DEFAULT_PARTITION_BLOCKS = 10_000_000  # IngestConfig.partition_blocks' default
# Creating partitions gives up on a lock it does not get within half a second (so the daemon's
# queries never queue behind it for long) and is tried again after these pauses.
PARTITION_RETRY_DELAYS = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 5.0, 5.0)


class CursorMoved(KeeperError):
    """The cursor moved under a write: another indexer is writing the same chain."""


class PartitionsBusy(KeeperError):
    """The event tables' partitions could not be created: their locks stayed taken."""


def _hex_bytes(value: str) -> bytes:
    return bytes.fromhex(value[2:])


def _header(row: asyncpg.Record) -> BlockHeader:
    """A `blocks` row as a header."""
    return BlockHeader(
        number=row["number"],
        hash="0x" + bytes(row["hash"]).hex(),
        parent_hash="0x" + bytes(row["parent_hash"]).hex(),
        timestamp=row["timestamp"],
    )


@dataclass(frozen=True)
class Cursor:
    """The `ingest_cursor` row of one chain."""

    start_block: int
    indexed_block: int
    indexed_hash: str | None
    indexed_timestamp: int | None
    head_block: int | None
    finalized_block: int | None
    backfill_done: bool


async def _put(send: MemoryObjectSendStream[tuple[str, Any]], item: tuple[str, Any]) -> bool:
    """Queue `item` for the copier; False if the copier has stopped (on an error)."""
    try:
        await send.send(item)
    except anyio.BrokenResourceError:
        return False
    return True


async def _feed(
    send: MemoryObjectSendStream[tuple[str, Any]],
    parts: Iterable[DecodedBatch],
    whole: DecodedBatch,
) -> bool:
    """Queue each part's COPY payloads as it is decoded, gathering its rows into `whole`;
    False if the copier stopped (on an error)."""
    for part in parts:
        for table, lines in part.text.items():
            # A memoryview: asyncpg takes bytes for a file name.
            text = memoryview(("\n".join(lines) + "\n").encode())
            if not await _put(send, (table, text)):
                return False
        raw = part.rows.get(RAW_TABLE)
        if raw and not await _put(send, (RAW_TABLE, raw)):
            return False
        for table, rows in part.rows.items():
            whole.rows.setdefault(table, []).extend(rows)
        whole.count += part.count
    return True


class Store:
    """Database side of the indexer for one chain."""

    def __init__(
        self,
        chain_id: int,
        decoder: Decoder,
        queries: Queries | None = None,
        *,
        partition_blocks: int = DEFAULT_PARTITION_BLOCKS,
    ) -> None:
        self.chain_id = chain_id
        self.decoder = decoder
        self.q = queries or load_queries("ingest.sql")
        self.delete_events_after = rollback_query()
        self.partition_blocks = partition_blocks
        self._partitioned = (0, 0)  # blocks [from, to) known to have their partitions

    async def ensure_partitions(self, conn: Conn, first: int, last: int) -> None:
        """Make sure the event tables have partitions for blocks [first, last].

        Free when an earlier call covered them. Otherwise one call of ensure_event_partitions,
        committed on its own (not inside a write: creating a partition takes a strong lock on
        the table, held only for that short transaction), tried again while another
        transaction holds the locks it needs (a lock timeout, or a deadlock the server broke).
        """
        low, high = self._partitioned
        if low <= first and last < high:
            return
        for delay in (*PARTITION_RETRY_DELAYS, None):
            try:
                end = await conn.fetchval(
                    self.q["ensure_event_partitions"],
                    self.chain_id,
                    first,
                    last,
                    self.partition_blocks,
                )
                break
            except (asyncpg.LockNotAvailableError, asyncpg.DeadlockDetectedError) as exc:
                if delay is None:
                    raise PartitionsBusy(
                        f"chain {self.chain_id}: the partitions of blocks {first} to {last} "
                        f"could not be created: {exc}",
                        help="a long transaction holds a lock on an event table (see "
                        "pg_locks); the indexer tries again on its next pass",
                    ) from exc
                await anyio.sleep(delay)
        # Contiguous with what was known: the indexer writes forward, rollbacks stay inside.
        self._partitioned = (low, end) if low <= first <= high else (first, end)

    async def cursor(self, conn: Conn, start_block: int) -> Cursor:
        """Read the cursor, creating it at `start_block` on first use."""
        await conn.execute(self.q["init_cursor"], self.chain_id, start_block)
        row = await conn.fetchrow(self.q["get_cursor"], self.chain_id)
        assert row is not None
        return Cursor(
            start_block=row["start_block"],
            indexed_block=row["indexed_block"],
            indexed_hash="0x" + bytes(row["indexed_hash"]).hex() if row["indexed_hash"] else None,
            indexed_timestamp=row["indexed_timestamp"],
            head_block=row["head_block"],
            finalized_block=row["finalized_block"],
            backfill_done=row["backfill_done"],
        )

    async def stored_block(self, conn: Conn, number: int) -> BlockHeader | None:
        """The canonical block the database holds at `number`, if any."""
        row = await conn.fetchrow(self.q["get_block"], self.chain_id, number)
        return None if row is None else _header(row)

    async def stored_blocks(self, conn: Conn, up_to: int) -> list[BlockHeader]:
        """The blocks the database holds up to `up_to`, newest first."""
        rows = await conn.fetch(self.q["blocks_from"], self.chain_id, 0)
        return [_header(r) for r in rows if r["number"] <= up_to]

    async def observe_head(self, conn: Conn, head: BlockHeader, finalized: int) -> None:
        """Record what the node reports (for lag in the views and metrics)."""
        await conn.execute(
            self.q["observe_head"], self.chain_id, head.number, head.timestamp, finalized
        )

    async def write_range(
        self,
        conn: Conn,
        batch: DecodedBatch | Iterable[DecodedBatch],
        from_block: int,
        end: BlockHeader,
        *,
        blocks: Iterable[BlockHeader] = (),
        backfill_done: bool = False,
    ) -> int:
        """Store the events of blocks [from_block, end.number] and move the cursor to `end`.

        `batch` may also be the range's logs decoded in consecutive parts (an iterator that
        decodes as it goes): each part is copied as soon as it is decoded, so the server
        ingests one part while the next is decoded. Returns the number of events stored.
        """
        started = time.perf_counter()
        parts = [batch] if isinstance(batch, DecodedBatch) else batch
        await self.ensure_partitions(conn, from_block, end.number)
        async with conn.transaction():
            await self._claim_cursor(conn, from_block - 1)
            done = await self._copy_events(conn, parts)
            if done.patches:
                await self._merge_streams(conn, done.patches)
            await self._refresh(conn, done.touched)
            if done.ledger:
                await self._merge_ledger(conn, done)
            for header in (*blocks, end):
                await self._upsert_block(conn, header)
            await conn.execute(
                self.q["advance_cursor"],
                self.chain_id,
                end.number,
                _hex_bytes(end.hash),
                end.timestamp,
                backfill_done,
            )
        metrics.DB_LATENCY.labels(kind="write_range").observe(time.perf_counter() - started)
        metrics.EVENTS_INDEXED.inc(done.count)
        metrics.BLOCKS_INDEXED.inc(end.number - from_block + 1)
        metrics.INDEXED_BLOCK.set(end.number)
        metrics.INDEXED_TIMESTAMP.set(end.timestamp)
        return done.count

    async def rollback_to(
        self,
        conn: Conn,
        ancestor: BlockHeader,
        old_head: BlockHeader,
        new_head: BlockHeader | None,
    ) -> int:
        """Undo every block after `ancestor`; returns the number of events removed."""
        started = time.perf_counter()
        chain = self.chain_id
        async with conn.transaction():
            await self._claim_cursor(conn, old_head.number)
            row = await conn.fetchrow(self.q["touched_after"], chain, ancestor.number)
            assert row is not None
            endpoints = await conn.fetch(self.q["endpoints_touched_after"], chain, ancestor.number)
            touched = Touched(
                streams=[int(x) for x in row["streams"]],
                escrows=[int(x) for x in row["escrows"]],
                accounts=[bytes(x) for x in row["accounts"]],
                params=True,
                endpoints=[(bytes(r["payee"]), int(r["endpoint"])) for r in endpoints],
            )
            # Ledger first: its subtraction reads the orphaned events before they go.
            await conn.execute(self.q["apply_ledger_range"], chain, ancestor.number, 2**62, -1)
            await conn.execute(self.q["drop_ledger_rows_after"], chain, ancestor.number)
            removed = int(await conn.fetchval(self.delete_events_after, chain, ancestor.number))
            await conn.execute(self.q["delete_blocks_after"], chain, ancestor.number)
            await self._refresh(conn, touched)
            await conn.execute(
                self.q["rewind_cursor"],
                chain,
                ancestor.number,
                _hex_bytes(ancestor.hash),
                ancestor.timestamp,
            )
            await conn.execute(
                self.q["record_reorg"],
                chain,
                old_head.number - ancestor.number,
                ancestor.number,
                old_head.number,
                _hex_bytes(old_head.hash),
                new_head.number if new_head else None,
                _hex_bytes(new_head.hash) if new_head else None,
                removed,
            )
        metrics.DB_LATENCY.labels(kind="rollback").observe(time.perf_counter() - started)
        return removed

    async def prune_blocks(self, conn: Conn, below: int) -> None:
        """Forget block rows below `below` (finalized history needs no parent-hash chain)."""
        await conn.execute(self.q["prune_blocks"], self.chain_id, below)

    async def _copy_events(self, conn: Conn, parts: Iterable[DecodedBatch]) -> Projected:
        """COPY the rows of each part while the next part is decoded; return what all of them
        change in the projections (worked out while the last COPYs run).

        A task sends the COPYs one after the other on `conn`; taking the next part from
        `parts` (which may decode it then) runs meanwhile, so the server's work on one part
        overlaps the decoding of the next. The queue between them is short: decoding never
        runs far ahead of what the server has taken.
        """
        whole = DecodedBatch(rows={})
        send, receive = anyio.create_memory_object_stream[tuple[str, Any]](COPY_QUEUE)

        async def copier() -> None:
            async with receive:
                async for table, payload in receive:
                    columns = list(self.decoder.columns(table))
                    if table == RAW_TABLE:
                        await conn.copy_records_to_table(table, records=payload, columns=columns)
                    else:
                        await conn.copy_to_table(
                            table, source=payload, columns=columns, format="text"
                        )

        with unwrap_group():
            async with anyio.create_task_group() as tg:
                tg.start_soon(copier)
                async with send:
                    fed = await _feed(send, parts, whole)
                # The last COPYs are still running: work out the projections meanwhile.
                projected = Projected.of(whole) if fed else None
        assert projected is not None  # the copier stopped early: the group raised its error
        return projected

    async def _merge_ledger(self, conn: Conn, done: Projected) -> None:
        """Add what the batch's events credit and claim to each account's ledger row."""
        deltas = {a: list(d) for a, d in done.deltas.items()}
        if done.credits:
            rows = await conn.fetch(self.q["stream_payees"], self.chain_id, list(done.credits))
            payees = {int(r["stream_id"]): bytes(r["payee"]) for r in rows}
            fold(
                deltas,
                ((payees[sid], amount, block) for sid, (amount, block) in done.credits.items()),
            )
        accounts = list(deltas)
        await conn.execute(
            self.q["merge_ledger"],
            self.chain_id,
            accounts,
            [deltas[a][0] for a in accounts],
            [deltas[a][1] for a in accounts],
        )

    async def _merge_streams(self, conn: Conn, patches: dict[int, StreamPatch]) -> None:
        ids = list(patches)
        ps = [patches[i] for i in ids]
        await conn.execute(
            self.q["merge_streams"],
            self.chain_id,
            ids,
            [p.payer for p in ps],
            [p.payee for p in ps],
            [p.opened_block for p in ps],
            [p.rate for p in ps],
            [p.balance for p in ps],
            [p.settled_at for p in ps],
            [p.usage_seq for p in ps],
            [p.price_list for p in ps],
            [p.closed for p in ps],
            [p.close_at for p in ps],
            [p.updated_block for p in ps],
        )

    async def _claim_cursor(self, conn: Conn, expected: int) -> None:
        if await conn.fetchval(self.q["claim_cursor"], self.chain_id, expected) is None:
            raise CursorMoved(
                f"chain {self.chain_id}: the cursor is no longer at block {expected}",
                help="another indexer writes to this database; only one may (the leader)",
            )

    async def _upsert_block(self, conn: Conn, h: BlockHeader) -> None:
        await conn.execute(
            self.q["upsert_block"],
            self.chain_id,
            h.number,
            _hex_bytes(h.hash),
            _hex_bytes(h.parent_hash),
            h.timestamp,
        )

    async def _refresh(self, conn: Conn, t: Touched) -> None:
        chain = self.chain_id
        if t.streams:
            await conn.execute(self.q["refresh_streams"], chain, t.streams)
        if t.escrows:
            await conn.execute(self.q["refresh_escrows"], chain, t.escrows)
        if t.accounts or t.escrows:
            await conn.execute(self.q["refresh_vault_accounts"], chain, t.accounts, t.escrows)
        if t.params:
            await conn.execute(self.q["refresh_contract_params"], chain)
        if t.endpoints:
            payees = [payee for payee, _ in t.endpoints]
            ids = [endpoint for _, endpoint in t.endpoints]
            await conn.execute(self.q["delete_gone_endpoints"], chain, payees, ids)
            await conn.execute(self.q["refresh_endpoints"], chain, payees, ids)
