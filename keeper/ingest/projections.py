"""What a decoded batch changes in the projections (streams, escrows, vault accounts, endpoints,
contract parameters, the payee ledger), worked out from its rows in Python.

The write path applies this directly (`merge_streams`, `merge_ledger`) and recomputes from the
stored events only what it cannot fold (`refresh_*` of `sql/ingest.sql`); a rollback recomputes
everything it touched. Rows are read by their columns' names (`keeper.ingest.catalog`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from keeper.ingest.catalog import EventRow
from keeper.ingest.events import DecodedBatch

STREAM_TABLES = frozenset(
    {
        "stream_opened",
        "stream_settled",
        "stream_topped_up",
        "stream_rate_updated",
        "stream_closed",
        "stream_close_requested",
        "usage_price_set",
        "usage_recorded",
    }
)
# Stream events whose effect the write path leaves to refresh_streams (a price set's coming
# into force depends on the time of the next one, which the stored history holds).
REFRESHED_STREAM_TABLES = frozenset({"usage_price_set"})
ENDPOINT_TABLES = frozenset({"endpoint_added", "endpoint_price_set"})
ESCROW_TABLES = frozenset({"escrow_created", "escrow_released", "escrow_refunded"})
# table -> the column naming the vault account the event moves
ACCOUNT_COLUMNS = {
    "vault_deposited": "account",
    "vault_withdrawn": "account",
    "escrow_created": "payer",
    "escrow_released": "payee",
    "escrow_refunded": "payer",
}
LEDGER_TABLES = frozenset({"stream_settled", "usage_recorded", "fees_credited", "claimed"})
PARAM_TABLES = frozenset(
    {"fee_updated", "fee_recipient_updated", "notice_period_set", "contract_events"}
)


@dataclass(frozen=True)
class Touched:
    """Entities whose projections must be recomputed."""

    streams: list[int]
    escrows: list[int]
    accounts: list[bytes]
    params: bool
    endpoints: list[tuple[bytes, int]] = field(default_factory=list)  # (payee, endpoint)

    @classmethod
    def from_batch(cls, batch: DecodedBatch, *, streams: bool = True) -> Touched:
        """What the rows of `batch` touch (streams left out if `streams` is false: the write
        path merges them from the events' post-state instead, all but those whose prices
        changed)."""
        stream_ids: set[int] = set()
        escrows: set[int] = set()
        accounts: set[bytes] = set()
        endpoints: set[tuple[bytes, int]] = set()
        for table, rows in batch.rows.items():
            if table in STREAM_TABLES and (streams or table in REFRESHED_STREAM_TABLES):
                stream_ids.update(r.stream_id for r in rows)
            if table in ENDPOINT_TABLES:
                endpoints.update((r.payee, r.endpoint) for r in rows)
            if table in ESCROW_TABLES:
                escrows.update(r.escrow_id for r in rows)
            column = ACCOUNT_COLUMNS.get(table)
            if column is not None:
                accounts.update(getattr(r, column) for r in rows)
        params = any(t in batch.rows for t in PARAM_TABLES)
        return cls(sorted(stream_ids), sorted(escrows), sorted(accounts), params, sorted(endpoints))


@dataclass
class StreamPatch:
    """A stream's post-state after a batch: None (or False) where the batch did not change it."""

    payer: bytes | None = None
    payee: bytes | None = None
    opened_block: int | None = None
    rate: int | None = None
    balance: int | None = None
    settled_at: int | None = None
    usage_seq: int | None = None
    price_list: bool | None = None
    closed: bool = False
    close_at: int | None = None
    updated_block: int = 0

    def apply(self, table: str, row: EventRow) -> None:
        """Fold in one stream event (events are applied in log order)."""
        self.updated_block = max(self.updated_block, row.block_number)
        if table == "stream_opened":
            self.payer, self.payee, self.rate, self.balance = (
                row.payer,
                row.payee,
                row.rate,
                row.deposit,
            )
            self.opened_block, self.settled_at = row.block_number, row.block_time
            self.price_list = bool(row.price_list)
        elif table == "stream_settled":
            self.balance, self.settled_at = row.balance_after, row.block_time
        elif table in ("stream_topped_up", "usage_recorded"):
            self.balance = row.balance_after
        elif table == "stream_rate_updated":
            self.rate = row.rate
        elif table == "stream_closed":
            self.balance, self.closed, self.close_at = 0, True, None
        elif table == "stream_close_requested":
            self.rate, self.close_at = 0, row.close_at


def stream_patches(batch: DecodedBatch) -> dict[int, StreamPatch]:
    """Fold the stream events of `batch`, in log order, into each stream's new post-state.

    Only the last event of each kind per stream can matter (rows of a table arrive in log
    order), so each table is reduced to those first and only the few survivors per stream are
    ordered: linear in the batch, which is what keeps large backfill ranges cheap.
    """
    last: dict[int, list[tuple[int, int, str, EventRow]]] = {}
    max_seq: dict[int, int] = {}
    for table in STREAM_TABLES:
        rows = batch.rows.get(table)
        if not rows:
            continue
        latest: dict[int, EventRow] = {}
        for row in rows:
            latest[row.stream_id] = row
        if table == "usage_recorded":
            for row in rows:
                if row.seq > max_seq.get(row.stream_id, -1):
                    max_seq[row.stream_id] = row.seq
        for sid, row in latest.items():
            last.setdefault(sid, []).append((row.block_number, row.log_index, table, row))
    patches: dict[int, StreamPatch] = {}
    for sid, events in last.items():
        events.sort(key=lambda e: (e[0], e[1]))
        patch = patches[sid] = StreamPatch(usage_seq=max_seq.get(sid))
        for _, _, table, row in events:
            patch.apply(table, row)
    return patches


def ledger_changes(batch: DecodedBatch) -> tuple[dict[int, list[int]], dict[bytes, list[int]]]:
    """What the batch credits per stream (amount - fee of settlements and usage charges) and
    per account (fees credited, claims), each with the first block it happened in."""
    rows = batch.rows
    per_stream: dict[int, list[int]] = {}  # stream -> [sum, first block]
    fold(
        per_stream,
        ((r.stream_id, r.amount - r.fee, r.block_number) for r in rows.get("stream_settled", ())),
    )
    fold(
        per_stream,
        ((r.stream_id, r.charged - r.fee, r.block_number) for r in rows.get("usage_recorded", ())),
    )
    per_account: dict[bytes, list[int]] = {}  # account -> [delta, first block]
    fold(
        per_account,
        ((r.recipient, r.amount, r.block_number) for r in rows.get("fees_credited", ())),
    )
    fold(per_account, ((r.payee, -r.amount, r.block_number) for r in rows.get("claimed", ())))
    return per_stream, per_account


K = TypeVar("K")


def fold(deltas: dict[K, list[int]], changes: Iterable[tuple[K, int, int]]) -> None:
    """Add each (key, amount, block) change to the [sum, first block] entry of its key."""
    for key, amount, block in changes:
        entry = deltas.get(key)
        if entry is None:
            deltas[key] = [amount, block]
        else:
            entry[0] += amount
            if block < entry[1]:
                entry[1] = block


@dataclass
class Projected:
    """What a batch changes in the projections, worked out from its rows in Python."""

    count: int
    patches: dict[int, StreamPatch]
    touched: Touched
    ledger: bool
    credits: dict[int, list[int]]
    deltas: dict[bytes, list[int]]

    @classmethod
    def of(cls, batch: DecodedBatch) -> Projected:
        """The projection changes of `batch`."""
        ledger = any(t in batch.rows for t in LEDGER_TABLES)
        per_stream, per_account = ledger_changes(batch) if ledger else ({}, {})
        return cls(
            count=batch.count,
            patches=stream_patches(batch),
            touched=Touched.from_batch(batch, streams=False),
            ledger=ledger,
            credits=per_stream,
            deltas=per_account,
        )
