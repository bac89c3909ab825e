"""Every event the keeper indexes, stated once: its table, its columns and their SQL types.

Everything else is derived from this module: the decoder (`keeper.ingest.events`) checks the
ABIs against it and names the rows it decodes after its columns, the rollback of a reorg deletes
from exactly its tables (`rollback_query`), and `tests/integration/test_event_tables.py` holds
the migrated tables equal to it (columns and types), so a migration and the catalog cannot
drift apart unnoticed. The migration of a new event table also partitions it like the others
(PARTITION BY RANGE (chain_id, block_number), a DEFAULT partition in schema event_partitions)
and lists it in `event_tables`, which the partition functions read; the same test checks that.

A column is written `"name"` or `"name sql_type"`: without a type it takes the SQL type of its
ABI argument (`SQL_TYPES`); with one, the table stores it narrower (times as `bigint`).
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

# Columns every event table starts with, in COPY order, and their SQL types.
COMMON_COLUMNS = ("chain_id", "block_number", "log_index", "tx_hash", "block_time")
COMMON_TYPES = ("bigint", "bigint", "integer", "bytea", "bigint")

# The SQL type of a column holding an ABI argument of each type (unless the column says).
SQL_TYPES = {
    "address": "bytea",
    "bytes32": "bytea",
    "bool": "boolean",
    "uint8": "smallint",
    "uint256": "numeric(78,0)",
}

# Turns an event's argument values (ABI order) into its table's column values.
Unpack = Callable[[list[Any]], list[Any]]


@dataclass(frozen=True)
class Packed:
    """A catalog entry whose arguments pack several values: `args` names the ABI arguments,
    `columns` the table's columns, and `unpack` maps the values of one to the other. The
    arguments are uint256 words, so a column without a type is `numeric(78,0)`."""

    args: tuple[str, ...]
    columns: tuple[str, ...]
    unpack: Unpack


_U32 = (1 << 32) - 1
_U64 = (1 << 64) - 1
_U96 = (1 << 96) - 1


def unpack_usage_recorded(values: list[Any]) -> list[Any]:
    """UsageRecorded(report, charge, state) -> its columns.

    report = streamId | seq << 64 | endpoint << 96 | units << 128 (bits from 192 clear),
    charge = charged | fee << 96, state = balanceAfter | price << 96; the shortfall is what
    the report cost at that price beyond what it charged."""
    report, charge, state = values
    units = report >> 128 & _U64
    charged = charge & _U96
    price = state >> 96
    return [
        report & _U64,
        report >> 64 & _U32,
        report >> 96 & _U32,
        units,
        charged,
        charge >> 96,
        units * price - charged,
        state & _U96,
        price,
    ]


USAGE_RECORDED_COLUMNS = (
    "stream_id",
    "seq",
    "endpoint",
    "units",
    "charged",
    "fee",
    "shortfall",
    "balance_after",
    "price",
)

# (contract, event) -> (table, columns in ABI argument order, or a Packed entry)
CATALOG: dict[tuple[str, str], tuple[str, tuple[str, ...] | Packed]] = {
    ("StreamManager", "StreamOpened"): (
        "stream_opened",
        ("stream_id", "payer", "payee", "rate", "deposit", "price_list"),
    ),
    ("StreamManager", "StreamSettled"): (
        "stream_settled",
        ("stream_id", "amount", "fee", "balance_after"),
    ),
    ("StreamManager", "SettleSkipped"): ("settle_skipped", ("stream_id", "reason")),
    ("StreamManager", "StreamToppedUp"): (
        "stream_topped_up",
        ("stream_id", "amount", "balance_after"),
    ),
    ("StreamManager", "StreamRateUpdated"): ("stream_rate_updated", ("stream_id", "rate")),
    ("StreamManager", "StreamClosed"): ("stream_closed", ("stream_id", "refunded")),
    ("StreamManager", "StreamCloseRequested"): (
        "stream_close_requested",
        ("stream_id", "close_at bigint"),
    ),
    ("StreamManager", "UsagePriceSet"): (
        "usage_price_set",
        ("stream_id", "price", "effective_at bigint"),
    ),
    ("StreamManager", "UsageRecorded"): (
        "usage_recorded",
        Packed(("report", "charge", "state"), USAGE_RECORDED_COLUMNS, unpack_usage_recorded),
    ),
    ("StreamManager", "EndpointAdded"): (
        "endpoint_added",
        ("payee", "endpoint", "name", "price"),
    ),
    ("StreamManager", "EndpointPriceSet"): (
        "endpoint_price_set",
        ("payee", "endpoint", "price", "effective_at bigint"),
    ),
    ("StreamManager", "NoticePeriodSet"): ("notice_period_set", ("notice_period bigint",)),
    ("StreamManager", "UsageSkipped"): (
        "usage_skipped",
        ("stream_id", "seq", "last_seq", "reason"),
    ),
    ("StreamManager", "FeesCredited"): ("fees_credited", ("recipient", "amount")),
    ("StreamManager", "Claimed"): ("claimed", ("payee", "amount")),
    ("StreamManager", "FeeUpdated"): ("fee_updated", ("fee_bps integer",)),
    ("StreamManager", "FeeRecipientUpdated"): ("fee_recipient_updated", ("recipient",)),
    ("EscrowVault", "Deposited"): ("vault_deposited", ("account", "amount", "available_after")),
    ("EscrowVault", "Withdrawn"): ("vault_withdrawn", ("account", "amount", "available_after")),
    ("EscrowVault", "EscrowCreated"): (
        "escrow_created",
        ("escrow_id", "payer", "payee", "amount", "expires_at bigint", "payer_available_after"),
    ),
    ("EscrowVault", "EscrowReleased"): (
        "escrow_released",
        ("escrow_id", "payee", "amount", "payee_available_after"),
    ),
    ("EscrowVault", "EscrowRefunded"): (
        "escrow_refunded",
        ("escrow_id", "payer", "amount", "payer_available_after"),
    ),
    ("EscrowVault", "RefundSkipped"): ("refund_skipped", ("escrow_id", "reason")),
}

# Events kept raw in `contract_events` (AccessControl and pause bookkeeping).
RAW_EVENTS = {
    "RoleGranted",
    "RoleRevoked",
    "RoleAdminChanged",
    "Paused",
    "Unpaused",
}
RAW_TABLE = "contract_events"
RAW_ENTRY = ("contract text", "event text", "topics bytea[]", "data bytea")


def split_column(column: str) -> tuple[str, str | None]:
    """A catalog column's name and its stated SQL type (None: its argument's)."""
    name, _, sql_type = column.partition(" ")
    return name, sql_type or None


def column_names(entry: tuple[str, ...] | Packed) -> tuple[str, ...]:
    """The table columns of a catalog entry (after the common ones), in COPY order."""
    columns = entry.columns if isinstance(entry, Packed) else entry
    return tuple(split_column(c)[0] for c in columns)


def column_types(entry: tuple[str, ...] | Packed, abi_types: tuple[str, ...]) -> tuple[str, ...]:
    """The SQL types of a catalog entry's columns, given its event's ABI argument types."""
    if isinstance(entry, Packed):
        return tuple(split_column(c)[1] or SQL_TYPES["uint256"] for c in entry.columns)
    return tuple(split_column(c)[1] or SQL_TYPES[t] for c, t in zip(entry, abi_types, strict=True))


RAW_COLUMNS = (*COMMON_COLUMNS, *column_names(RAW_ENTRY))
RAW_TYPES = (*COMMON_TYPES, *(str(split_column(c)[1]) for c in RAW_ENTRY))
EVENT_TABLES = tuple(sorted({table for table, _ in CATALOG.values()} | {RAW_TABLE}))


class EventRow(tuple[Any, ...]):
    """A decoded row: its table's values in COPY order, each also readable by its column's name
    (`row.stream_id`). Each table has its subclass, made from the catalog (`ROWS`)."""

    __slots__ = ()
    _fields: tuple[str, ...] = ()

    if TYPE_CHECKING:

        def __getattr__(self, name: str) -> Any:
            """A column by name (the subclass's fields; declared for the type checker)."""


def _row_class(table: str, columns: tuple[str, ...]) -> type[EventRow]:
    # A named tuple's fields read as fast as an index, which the projections do per row. The
    # ignore: mypy wants literal names, and these come from the catalog.
    fields = namedtuple(table, columns)  # type: ignore[misc]
    return type(table, (fields, EventRow), {"__slots__": ()})


# table -> the class of its rows
ROWS: dict[str, type[EventRow]] = {
    table: _row_class(table, COMMON_COLUMNS + column_names(entry))
    for table, entry in CATALOG.values()
} | {RAW_TABLE: _row_class(RAW_TABLE, RAW_COLUMNS)}


def rollback_query() -> str:
    """One statement that deletes the rows of chain $1 after block $2 from every event table
    and returns how many it deleted.

    Built from the catalog rather than written out in `sql/ingest.sql`: a table added to the
    catalog is rolled back without a second list to keep in step.
    """
    # S608: the names interpolated are EVENT_TABLES and indexes, never input.
    deletes = ",\n".join(
        f"d{i} AS (DELETE FROM {table} WHERE chain_id = $1 AND block_number > $2 RETURNING 1)"  # noqa: S608
        for i, table in enumerate(EVENT_TABLES)
    )
    counts = "\n     + ".join(f"(SELECT count(*) FROM d{i})" for i in range(len(EVENT_TABLES)))  # noqa: S608
    return f"WITH {deletes}\nSELECT {counts}"
