"""The kinds of work the keeper sends, each stated once.

A batch kind is one permissionless (or oracle) call over many items: the planners cut its batches
by `gas_per_item`, the transaction manager encodes, splits and checks them per item, and the
contract skips an item it cannot apply with a reason code. Every fact about a kind lives in its
record here; the modules that handle batches (`keeper.plan.batches`, the outbox, the transaction
manager, the health port) read them from `BATCH_KINDS` and `INTENT_KINDS`, so adding a kind
touches this file (and the planner that produces it).

The skip codes are the contracts' SKIP_* constants; `keeper.plan.accrual` names the same codes for
the model of StreamManager, and a unit test holds the two equal.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from types import MappingProxyType
from typing import Any

from eth_utils import keccak


@dataclass(frozen=True)
class BatchKind:
    """One kind of batch call."""

    name: str
    signature: str  # the function, e.g. settleStreams(uint256[])
    gas_per_item: int  # the worst case per item (see keeper.plan.batches.gas_floor)
    skip_reasons: Mapping[int, str]  # the contract's reason codes for a skipped item
    effects_query: str  # the named query (sql/outbox.sql) that finds each item's effect

    @cached_property
    def selector(self) -> bytes:
        """The function's four-byte selector (computed once: every batch's calldata starts with
        it)."""
        return keccak(text=self.signature)[:4]


SETTLE = BatchKind(
    name="settle",
    signature="settleStreams(uint256[])",
    gas_per_item=40_000,
    skip_reasons=MappingProxyType({1: "unknown stream", 2: "stream closed", 3: "nothing due"}),
    effects_query="settle_effects",
)
REFUND = BatchKind(
    name="refund",
    signature="refundExpired(uint256[])",
    gas_per_item=35_000,
    skip_reasons=MappingProxyType({1: "unknown escrow", 2: "escrow not open", 3: "not expired"}),
    effects_query="refund_effects",
)
USAGE = BatchKind(
    name="usage",
    signature="recordUsage(uint256[])",
    gas_per_item=40_000,
    skip_reasons=MappingProxyType(
        {
            1: "unknown stream",
            2: "stream closed",
            4: "replay",
            5: "sequence gap",
            6: "bad units",
            7: "unknown endpoint",
        }
    ),
    effects_query="usage_effects",
)

BATCH_KINDS: Mapping[str, BatchKind] = MappingProxyType(
    {kind.name: kind for kind in (SETTLE, REFUND, USAGE)}
)
# Every intents.kind (the CHECK list of the intents table): the batch kinds, then the single
# calls the manager sends itself (a purge of a stuck nonce, a one-off contract call).
SINGLE_CALL_KINDS = ("purge", "call")
INTENT_KINDS = (*BATCH_KINDS, *SINGLE_CALL_KINDS)


# A batch item as its row in `batch_items` holds it: (entity, seq, units, endpoint). The entity
# is the stream or escrow id; seq, units and endpoint are a usage report's, None for the others.
ItemColumns = tuple[int, int | None, int | None, int | None]
# An item within its batch: (entity, seq).
ItemRef = tuple[int, int | None]


def usage_fields(item: Sequence[Any]) -> tuple[int, int, int, int]:
    """A usage item's `(stream id, units, seq, endpoint)`; an item of three (planned before
    endpoints existed) has endpoint 0."""
    return int(item[0]), int(item[1]), int(item[2]), int(item[3]) if len(item) > 3 else 0


def item_columns(kind: str, item: Any) -> ItemColumns:
    """The `batch_items` columns of a planned item: an id, or `[stream id, units, seq,
    endpoint]` for usage."""
    if kind == USAGE.name:
        stream_id, units, seq, endpoint = usage_fields(item)
        return stream_id, seq, units, endpoint
    return int(item), None, None, None


def item_of_columns(kind: str, columns: ItemColumns) -> Any:
    """The planned item a `batch_items` row holds (the inverse of `item_columns`)."""
    entity, seq, units, endpoint = columns
    if kind == USAGE.name:
        return [entity, units, seq, endpoint]
    return entity


def item_ref(kind: str, item: Any) -> ItemRef:
    """Which item of its batch `item` is: its entity and, for usage, its sequence number."""
    entity, seq, _units, _endpoint = item_columns(kind, item)
    return entity, seq


def ref_key(ref: ItemRef) -> str:
    """How an item is named in logs and idempotency keys: the id, or `id:seq` for usage."""
    entity, seq = ref
    return str(entity) if seq is None else f"{entity}:{seq}"
